"""`ServeOptions`: the server settings of `shelf serve`, shared by every serving module."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeOptions"]


@dataclass(frozen=True)
class ServeOptions:
    """Server settings from the command line; `None` batching values keep each api's own.

    `max_loaded` bounds how many served models are in memory at once: the first ones load at
    start, the others on first use, evicting the least recently used (None: all, at start).
    A batch runs on the event loop instead of the worker thread when its queue's measured compute
    time is below the measured handoff cost and below `inline_max_s` (0 disables it).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    max_batch_size: int | None = None
    max_latency_ms: float | None = None
    max_queue: int = 1024
    timeout: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    api_token: str | None = None
    metrics_auth: bool = False
    access_log: bool = False
    fill_wait: bool = True
    threads: int | None = None
    max_loaded: int | None = None
    inline_max_s: float = 0.001
    header_timeout: float = 10.0  # request headers must be complete within this (connections.py)
    max_connections: int | None = None  # open connections past this get 503 (None: unbounded)
