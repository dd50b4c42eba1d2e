"""pytest plugin and fixtures for mlbus tests."""
