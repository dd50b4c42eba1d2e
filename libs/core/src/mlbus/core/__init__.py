"""Shared foundation for mlbus services."""
