"""Implementations of the ports: SQL job store, child processes, datasets, registry."""
