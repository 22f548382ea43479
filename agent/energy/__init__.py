"""Energy: power sources (NVML, replay, null), the poller, idle baselines and gated energy windows."""
