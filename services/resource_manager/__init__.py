"""The resource manager (seed 000): the registry of hosts and the only reader of agent events.

It owns the ``resources`` collection. Agent events arrive on the untrusted exchange; each one's
signature is checked against the verify key of the host it claims to come from, and only then is
it republished on the trusted events exchange.
"""
