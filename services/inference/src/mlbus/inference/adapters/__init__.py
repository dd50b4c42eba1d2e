"""Implementations of the worker's ports: ONNX Runtime, the object store, the capture topic."""
