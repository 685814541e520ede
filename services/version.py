"""The version skybus reports (``/openapi.json``, ``/resources/.applicationserver/info``)."""

VERSION = "0.1.0"
