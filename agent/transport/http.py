"""What every HTTP backend shares: the pooled session, the stale-connection retry, the error mapping.

The sessions' connections stamp their reads on the socket-side clock (``agent.transport.socket_clock``),
reporting to the arrival probe the backend owns.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from agent.core.errors import RequestFailedError
from agent.transport.probe import ArrivalProbe
from agent.transport.socket_clock import ProbedBody, stamping

__all__ = [
    "failure_from",
    "open_session",
    "post_once_more_if_stale",
    "read_error_body",
]

logger = structlog.get_logger(__name__)

_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def open_session(
    headers: Mapping[str, str],
    *,
    probe: ArrivalProbe,
    max_connections: int,
    connect_timeout_s: float,
    keep_alive: bool = True,
) -> aiohttp.ClientSession:
    """One session and connector sized by ``max_connections``; no total timeout (the runner owns it).

    Its connections stamp every socket read and report to ``probe`` where this aiohttp allows it.
    """
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, force_close=not keep_alive)
    stamping(connector, probe)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=dict(headers))


async def post_once_more_if_stale(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    probe: ArrivalProbe,
) -> aiohttp.ClientResponse:
    """POST and wait for the response head, retrying once on a stale pooled connection.

    Servers close idle keep-alive connections at will; a request written into such a socket fails
    before the server saw it, so one retry on a fresh connection is safe and its time stays inside
    the record's TTFT and E2E.
    """
    try:
        resp = await session.post(url, data=ProbedBody(payload, probe), headers=headers)
        probe()
        return resp
    except aiohttp.ClientError as e:
        if not isinstance(e, _STALE) or isinstance(e, aiohttp.ClientConnectorError):
            raise
        logger.debug("retrying on a fresh connection", error=repr(e))
    return await session.post(url, data=ProbedBody(payload, probe), headers=headers)


async def read_error_body(resp: aiohttp.ClientResponse) -> RequestFailedError:
    """A non-2xx answer as a degraded-record failure carrying the start of the body."""
    text = (await resp.content.read(600)).decode("utf-8", errors="replace")
    return RequestFailedError(f"http_{resp.status}", text.strip()[:300])


def failure_from(e: aiohttp.ClientError) -> RequestFailedError:
    """Translate an aiohttp error, once, into the degraded-record taxonomy.

    A server that sent bytes aiohttp could not parse as HTTP (a garbage status line, a bad chunk size,
    an oversized header) answered: that is ``invalid_response``, never "unreachable".
    """
    detail = " ".join(f"{e.__class__.__name__}: {e}".split())[:300]
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return RequestFailedError("timeout_connect", str(e))
    if isinstance(e, aiohttp.ClientConnectorError):
        return RequestFailedError("connection", str(e))
    if isinstance(e, aiohttp.ClientResponseError) or _unparseable(e):
        return RequestFailedError("invalid_response", detail)
    if isinstance(e, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return RequestFailedError("connection_reset", detail)
    return RequestFailedError("connection", detail)


def _unparseable(e: BaseException) -> bool:
    """Whether aiohttp's HTTP parser refused the bytes (rather than the connection ending early)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, HttpProcessingError) and not _cut_short(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _cut_short(e: HttpProcessingError) -> bool:
    """A body that ended before its declared length: the connection dropped, not garbage."""
    return "Not enough data" in str(e.message)
