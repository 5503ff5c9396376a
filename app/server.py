"""Uvicorn's options for ``movierec serve``: timeouts for slow or silent clients.

Uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but it has no timeout
for a request's headers: a client that connects and sends nothing, or sends a header a byte at a
time, holds a connection (and a file descriptor) for as long as it likes. The protocol classes
here add one: the request line and headers must have arrived within
``MOVIEREC_HEADER_TIMEOUT_SECONDS`` of the connection's start (or of the previous response's
end, on a kept-alive connection), or the connection is closed. Bodies are not timed here (the
body size limit is the application's, ``MOVIEREC_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import Settings, get_settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _HeaderTimeout:
    """The timer: armed when a connection opens and when a response ends, disarmed when the
    next request's headers are complete; when it fires, the connection is closed."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        seconds = get_settings().header_timeout_seconds
        if seconds > 0:
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


if HttpToolsProtocol is not None:

    class HeaderTimeoutHttpToolsProtocol(_HeaderTimeout, HttpToolsProtocol):
        """Uvicorn's httptools protocol with a timeout for the request's headers."""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline:
                self._arm_header_timer()


class HeaderTimeoutH11Protocol(_HeaderTimeout, H11Protocol):
    """Uvicorn's h11 protocol with a timeout for the request's headers."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state in (h11.SEND_BODY, h11.DONE):  # headers complete
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` for these settings (timeouts, protocol)."""
    protocol = (
        "HeaderTimeoutHttpToolsProtocol"
        if HttpToolsProtocol is not None
        else "HeaderTimeoutH11Protocol"
    )
    return {
        "timeout_keep_alive": settings.keep_alive_seconds,
        "http": f"{__name__}:{protocol}",
    }
