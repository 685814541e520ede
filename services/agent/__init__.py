"""The agent: one per host. It speaks for its host only, signing every event with its token."""
