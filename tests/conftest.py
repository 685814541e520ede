"""Fixtures shared by every test layer: RabbitMQ (a vhost per session, a namespace per test)."""

from tests.rabbit import amqp_topology, amqp_url, amqp_vhost  # noqa: F401
