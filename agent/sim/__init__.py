"""The simulator: a declared timing model (``model``) served over loopback (``server``).

A product in its own right (``infermeter sim-server``): the ground truth the timing tests and the load
benchmarks compare the client against, and a stand-in server for trying scenarios without a model.
"""
