"""The REST gateway: stateless; writes become bus commands, reads come from the store."""
