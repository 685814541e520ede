"""Typed wire models: every command, event and REST body of skybus, one module per domain."""
