"""What every HTTP backend shares: one pooled session, the stale-connection retry, one error mapping."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import structlog

from agent.backends.base import HttpBackendArgs
from agent.errors import RequestFailedError

__all__ = ["failure_from", "open_session", "post_once_more_if_stale", "read_error_body"]

logger = structlog.get_logger(__name__)

_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def open_session(
    args: HttpBackendArgs, headers: Mapping[str, str], *, keep_alive: bool = True
) -> aiohttp.ClientSession:
    """One session and connector sized by ``max_connections``; no total timeout (the runner owns it)."""
    connector = aiohttp.TCPConnector(limit=args.max_connections, limit_per_host=0, force_close=not keep_alive)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=args.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=dict(headers))


async def post_once_more_if_stale(
    session: aiohttp.ClientSession, url: str, payload: bytes, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientResponse:
    """POST and wait for the response head, retrying once on a stale pooled connection.

    Servers close idle keep-alive connections at will; a request written into such a socket fails
    before the server saw it, so one retry on a fresh connection is safe and its time stays inside
    the record's TTFT and E2E.
    """
    try:
        return await session.post(url, data=payload, headers=headers)
    except aiohttp.ClientError as e:
        if not isinstance(e, _STALE) or isinstance(e, aiohttp.ClientConnectorError):
            raise
        logger.debug("retrying on a fresh connection", error=repr(e))
    return await session.post(url, data=payload, headers=headers)


async def read_error_body(resp: aiohttp.ClientResponse) -> RequestFailedError:
    """A non-2xx answer as a degraded-record failure carrying the start of the body."""
    text = (await resp.content.read(600)).decode("utf-8", errors="replace")
    return RequestFailedError(f"http_{resp.status}", text.strip()[:300])


def failure_from(e: aiohttp.ClientError) -> RequestFailedError:
    """Translate an aiohttp error, once, into the degraded-record taxonomy."""
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return RequestFailedError("timeout_connect", str(e))
    if isinstance(e, aiohttp.ClientConnectorError):
        return RequestFailedError("connection", str(e))
    if isinstance(e, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return RequestFailedError("connection_reset", f"{e.__class__.__name__}: {e}")
    return RequestFailedError("connection", f"{e.__class__.__name__}: {e}")
