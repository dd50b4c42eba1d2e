"""mlbus Python SDK and CLI."""
