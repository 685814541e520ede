"""The bus: a small port, the envelope codec, one topology module, and two adapters (AMQP, in-process)."""
