"""The gateway's access log: a line per request on the ``skybus.access`` logger, at INFO.

It names the method, the path (never the query string, which may carry ``?token=``), the status, the
time taken and the user when the token was known; never a header. In JSON (``--log-format json``)
each of these is a field of its own. ``--no-access-log`` (``SKYBUS_ACCESS_LOG=0``) turns it off.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from services.gateway.context import PRINCIPAL

ACCESS_LOGGER = logging.getLogger("skybus.access")


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        principal = request.get(PRINCIPAL)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(time * 1000, 1),
            "user": principal.user if principal is not None else None,
            "remote": request.remote,
        }
        self.logger.info(
            "%s %s %s %.1fms user=%s",
            fields["method"],
            fields["path"],
            fields["status"],
            fields["duration_ms"],
            fields["user"] or "-",
            extra=fields,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
