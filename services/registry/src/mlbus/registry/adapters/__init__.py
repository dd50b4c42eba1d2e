"""Implementations of the registry's ports: SQL storage and outbox, ONNX inspection,
upload staging, and the Kafka relay."""
