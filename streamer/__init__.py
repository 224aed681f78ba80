"""Serve Keras RNNs one timestep at a time for many concurrent streams."""

__version__ = "0.1.0"
