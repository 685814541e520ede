"""Fixtures of the contract suites. The RabbitMQ ones come from :mod:`tests.rabbit`."""

import sys
from pathlib import Path

# pytest does not put the repository on sys.path (no pythonpath setting, no tests/__init__.py yet);
# this makes ``broker`` and ``tests.rabbit`` importable until the project config does it.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.rabbit import amqp_topology, amqp_url, amqp_vhost  # noqa: E402, F401
