"""Faithful local stand-ins for the providers: real HTTP servers on 127.0.0.1, run by uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bulkmail_kernel.servers.web import serve_in_thread


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run the ASGI ``app`` in a thread on a free loopback port and yield its base URL."""
    running = serve_in_thread(app)
    try:
        yield running.url
    finally:
        running.stop()
