"""Kafka handlers of the inference worker (asynchronous requests)."""
