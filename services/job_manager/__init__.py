"""The job manager (seed 001): places jobs on hosts, follows them to one final state, never loses one.

It owns the ``jobs`` collection. It reads (never writes) the resource manager's ``resources`` to
place jobs and to notice silent hosts.
"""
