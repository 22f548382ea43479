"""Running load: the runner that measures and emits, its load shapes, the launch and the daemon.

The launch carries out one run (stages, tenants, files, energy); the daemon probes production for months.
"""
