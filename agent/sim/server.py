"""The simulator's server: HTTP/1.1 on a bare ``asyncio.Protocol``, chunks pre-encoded, times logged.

Routes: ``POST /v1/chat/completions``, ``/v1/completions`` (SSE), ``/api/chat``, ``/api/generate``
(NDJSON), ``GET /v1/models``, ``/api/tags``, ``/api/version``, ``/health``, and llama.cpp's
``POST /tokenize`` and ``/detokenize`` (tokens are runs of ``chars_per_token`` characters, the way
the simulator counts a prompt, and ``<s>``). Each request follows the
declared :class:`~agent.sim.model.SimModel`: tokens are scheduled at absolute times (arrival + TTFT,
then + ITL each), so a late wake-up never shifts the tokens after it, and chunks due together leave in
one write. Native timing fields report what the simulator actually did: prefill = arrival → first
chunk, decode = first → last chunk. The header ``X-Sim-Fault: http_500 | drop | stall`` forces a fault.
``GET /sim/model`` shows the model and ``PUT /sim/model`` with a JSON object of model fields changes it
for the requests that arrive from then on (a regression on demand: ``{"ttft_ms": 80, "itl_ms": 8}``).

Run as ``python -m agent.sim.server '<json config>'`` (what the ``sim`` backend does) or
through ``infermeter sim-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from agent.sim.model import SimModel

__all__ = ["SimServer", "main", "serve"]

_WORDS = [
    " the",
    " model",
    " streams",
    " tokens",
    " at",
    " a",
    " steady",
    " pace",
    " while",
    " we",
    " measure",
    " every",
    " gap",
    " and",
    " each",
    " byte",
]
_STATUS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
}
_MAX_HEAD = 64 * 1024
_MAX_PER_WRITE = 32
#: how long before a due time the server stops sleeping and yields to the loop instead
_SPIN_S = 0.0015
_CREATED_AT = "2026-01-01T00:00:00.000000000Z"


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-transfer frame."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _role_frame(model_name: str) -> bytes:
    """The first chunk of an OpenAI chat stream: the assistant role, no content yet."""
    choice = {"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}
    return _sse(
        {
            "id": "chatcmpl-sim",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model_name,
            "choices": [choice],
        }
    )


def _sse(obj: Any) -> bytes:
    return _frame(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def _ndjson(obj: Any) -> bytes:
    return _frame(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class _Frames:
    """Every token chunk a protocol can send, built once: [reasoning?][start word index]."""

    def __init__(self, route: str, model: str, tokens_per_chunk: int) -> None:
        self.frames: list[list[bytes]] = [
            [
                self._build(route, model, self._text(i, tokens_per_chunk), reasoning)
                for i in range(len(_WORDS))
            ]
            for reasoning in (False, True)
        ]

    @staticmethod
    def _text(start: int, n: int) -> str:
        return "".join(_WORDS[(start + k) % len(_WORDS)] for k in range(n))

    @staticmethod
    def _build(route: str, model: str, text: str, reasoning: bool) -> bytes:
        if route == "chat":
            delta = {"reasoning_content": text} if reasoning else {"content": text}
            return _sse(
                {
                    "id": "chatcmpl-sim",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
            )
        if route == "completions":
            return _sse(
                {
                    "id": "cmpl-sim",
                    "object": "text_completion",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": None}],
                }
            )
        key = "thinking" if reasoning else ("content" if route == "api_chat" else "response")
        if route == "api_chat":
            return _ndjson(
                {
                    "model": model,
                    "created_at": _CREATED_AT,
                    "message": {"role": "assistant", "content": "", key: text},
                    "done": False,
                }
            )
        return _ndjson({"model": model, "created_at": _CREATED_AT, "response": "", key: text, "done": False})


@dataclass(slots=True)
class _Plan:
    route: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    ttft_s: float
    itl_s: list[float]
    fault: str | None
    load_s: float


@dataclass(slots=True)
class _Result:
    outcome: str = "ok"
    emit_ns: list[int] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    """One client connection: parse requests one at a time, hand each to the server."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.keep_alive = True
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._dispatch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        if not self._writable.is_set():
            await self._writable.wait()

    def write(self, data: bytes) -> None:
        """Write unless the client already went away."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _dispatch(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self.reply_json(431, {"error": "request head too large"}, close=True)
            return
        try:
            method, path, headers = _parse_head(bytes(self.buf[:end]))
        except ValueError as e:
            self.reply_json(400, {"error": str(e)}, close=True)
            return
        if "transfer-encoding" in headers:
            self.reply_json(411, {"error": "send a Content-Length body"}, close=True)
            return
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        self.keep_alive = headers.get("connection", "").lower() != "close"
        self.task = asyncio.get_running_loop().create_task(
            self.server.handle(self, method, path, headers, body)
        )
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            self.server.errors += 1
            self.abort()
            return
        if self.closed:
            return
        if not self.keep_alive:
            assert self.transport is not None
            self.transport.close()
        elif self.buf:
            self._dispatch()

    def abort(self) -> None:
        """Drop the connection at once (RST), the way a crashed server would."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def head(self, status: int, content_type: bytes, length: int | None) -> bytes:
        """Status line and headers: chunked when ``length`` is None."""
        framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
        conn = b"keep-alive" if self.keep_alive else b"close"
        return (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s\r\nConnection: %s\r\nServer: infermeter-sim\r\n\r\n"
            % (status, _STATUS.get(status, b"Status"), content_type, framing, conn)
        )

    def reply_json(self, status: int, obj: Any, *, close: bool = False) -> None:
        """A whole JSON answer with Content-Length."""
        if close:
            self.keep_alive = False
        body = json.dumps(obj).encode()
        self.write(self.head(status, b"application/json", len(body)) + body)
        if close and self.transport is not None and not self.closed:
            self.transport.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers


#: The simulator's one special token, which its ``/tokenize`` splits text at (as real tokenizers do).
BOS = "<s>"

_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/api/chat": "api_chat",
    "/api/generate": "api_generate",
}


class SimServer:
    """Plans and streams simulated responses; logs each request's chunk send times when asked."""

    def __init__(self, model: SimModel, emission_log: IO[str] | None = None) -> None:
        self.model = model
        self.rng = random.Random(model.seed)
        self.log = emission_log
        self.errors = 0
        self.requests = 0
        #: streams sent to their end (what a client could have recorded as ok)
        self.served = 0
        self._loaded = model.load_ms <= 0
        self._frames = {r: _Frames(r, model.model_name, model.tokens_per_chunk) for r in _ROUTES.values()}
        #: the simulator's token vocabulary: each run of characters it has seen, by id
        self._vocab: dict[str, int] = {BOS: 0}
        self._pieces: list[str] = []

    async def handle(self, conn: _Conn, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Answer one request."""
        arrival_ns = time.perf_counter_ns()
        self.requests += 1
        route = _ROUTES.get(path)
        if path == "/sim/model":
            self._model(conn, method, body)
            return
        if path in ("/tokenize", "/detokenize") and method == "POST":
            self._tokens(conn, path, body)
            return
        if route is None:
            self._info(conn, method, path)
            return
        if method != "POST":
            conn.reply_json(405, {"error": f"{path} takes POST"})
            return
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as e:
            conn.reply_json(400, {"error": f"invalid JSON body: {e}"})
            return
        plan = self._plan(route, req, headers.get("x-sim-fault"))
        result = await self._serve(conn, plan, arrival_ns)
        if result.outcome == "ok":
            self.served += 1
        if self.log is not None:
            self._log(headers.get("x-request-id"), path, arrival_ns, plan, result)

    def _tokens(self, conn: _Conn, path: str, body: bytes) -> None:
        """``/tokenize`` (``content``, optionally ``with_pieces``) and ``/detokenize`` (``tokens``)."""
        try:
            req = json.loads(body or b"{}")
            if path == "/tokenize":
                step = max(1, round(self.model.chars_per_token))
                pieces = []
                for k, text in enumerate(str(req["content"]).split(BOS)):  # a special token splits the text
                    pieces += ([BOS] if k else []) + [text[i : i + step] for i in range(0, len(text), step)]
                ids = [self._vocab.setdefault(p, len(self._vocab)) for p in pieces]
                tokens: list[Any] = (
                    [{"id": i, "piece": p} for i, p in zip(ids, pieces, strict=True)]
                    if req.get("with_pieces")
                    else ids
                )
                conn.reply_json(200, {"tokens": tokens})
                return
            if len(self._pieces) != len(self._vocab):
                self._pieces = sorted(self._vocab, key=self._vocab.__getitem__)
            conn.reply_json(200, {"content": "".join(self._pieces[int(i)] for i in req["tokens"])})
        except (ValueError, KeyError, TypeError, IndexError) as e:
            conn.reply_json(400, {"error": f"invalid {path} body: {e}"})

    def _model(self, conn: _Conn, method: str, body: bytes) -> None:
        """Show the model, or change its fields for the requests that come next."""
        if method in ("PUT", "POST"):
            try:
                update = json.loads(body or b"{}")
                if not isinstance(update, dict):
                    raise ValueError("body is not a JSON object")
                model = SimModel.model_validate(self.model.model_dump() | update)
            except ValueError as e:
                conn.reply_json(400, {"error": f"invalid model: {e}"})
                return
            if (model.model_name, model.tokens_per_chunk) != (
                self.model.model_name,
                self.model.tokens_per_chunk,
            ):
                self._frames = {
                    r: _Frames(r, model.model_name, model.tokens_per_chunk) for r in _ROUTES.values()
                }
            self.model = model
        elif method != "GET":
            conn.reply_json(405, {"error": "/sim/model takes GET or PUT"})
            return
        conn.reply_json(200, self.model.model_dump(mode="json"))

    def _info(self, conn: _Conn, method: str, path: str) -> None:
        name = self.model.model_name
        answers: dict[str, object] = {
            "/v1/models": {
                "object": "list",
                "data": [{"id": name, "object": "model", "owned_by": "infermeter-sim"}],
            },
            "/api/tags": {
                "models": [
                    {
                        "name": name,
                        "model": name,
                        "size": 0,
                        "digest": "sim",
                        "details": {"family": "sim", "quantization_level": "none"},
                    }
                ]
            },
            "/api/version": {"version": "infermeter-sim"},
            "/api/ps": {"models": []},
            "/api/show": {
                "details": {"format": "sim", "family": "sim", "quantization_level": "none"},
                "model_info": {"general.architecture": "sim"},
                "capabilities": ["completion"],
            },
            "/health": {"status": "ok", "served": self.served},
        }
        if path not in answers:
            conn.reply_json(404, {"error": f"no route {method} {path}"})
        else:
            conn.reply_json(200, answers[path])

    def _plan(self, route: str, req: dict[str, object], forced: str | None) -> _Plan:
        m, rng = self.model, self.rng
        prompt_tokens = max(1, round(len(_prompt_text(req)) / m.chars_per_token))
        limit = _max_tokens(route, req)
        n = limit if m.output_tokens is None else max(1, min(limit, round(m.output_tokens.sample(rng))))
        chunks = math.ceil(n / m.tokens_per_chunk)
        ttft = m.ttft_ms.sample(rng) + prompt_tokens * m.prefill_ms_per_token
        itl = [m.itl_ms.sample(rng) / 1000 for _ in range(chunks - 1)]
        fault = forced
        if fault is None:
            draw = rng.random()
            if draw < m.error_rate:
                fault = "http_500"
            elif draw < m.error_rate + m.drop_rate:
                fault = "drop"
            elif draw < m.error_rate + m.drop_rate + m.stall_rate:
                fault = "stall"
        load_s = 0.0
        if not self._loaded:
            self._loaded, load_s = True, m.load_ms / 1000
        finish = "length" if n >= limit else "stop"
        return _Plan(route, prompt_tokens, n, finish, ttft / 1000, itl, fault, load_s)

    async def _serve(self, conn: _Conn, plan: _Plan, arrival_ns: int) -> _Result:
        result = _Result()
        if plan.fault == "http_500":
            sse_error = {"error": {"message": "simulated failure", "type": "server_error"}}
            conn.reply_json(
                500, sse_error if plan.route in ("chat", "completions") else {"error": "simulated failure"}
            )
            result.outcome = "http_500"
            return result
        sse = plan.route in ("chat", "completions")
        conn.write(conn.head(200, b"text/event-stream" if sse else b"application/x-ndjson", None))
        if plan.route == "chat":
            conn.write(_role_frame(self.model.model_name))
        chunks = len(plan.itl_s) + 1
        t0 = arrival_ns / 1e9
        due = t0 + plan.load_s + plan.ttft_s
        frames = self._frames[plan.route].frames
        tpc, reasoning = self.model.tokens_per_chunk, self.model.reasoning_tokens
        cut = chunks // 2 if plan.fault in ("drop", "stall") else -1
        i = 0
        while i < chunks:
            await self._until(due, yield_anyway=i > 0)
            if conn.closed:
                result.outcome = "client_gone"
                return result
            now = time.perf_counter()
            batch: list[bytes] = []
            while i < chunks and (due <= now or not batch) and len(batch) < _MAX_PER_WRITE:
                first_token = i * tpc
                batch.append(frames[first_token < reasoning][first_token % len(_WORDS)])
                if i == cut and plan.fault == "stall":
                    due += self.model.stall_ms / 1000
                due += plan.itl_s[i] if i < chunks - 1 else 0.0
                i += 1
                if i - 1 == cut:
                    break
            stamp = time.perf_counter_ns()  # before the write: a client can never read earlier than this
            conn.write(b"".join(batch))
            result.emit_ns.extend([stamp] * len(batch))
            if i - 1 == cut and plan.fault == "drop":
                conn.abort()
                result.outcome = "dropped"
                return result
            await conn.drain()
        conn.write(self._final(plan, arrival_ns, result.emit_ns))
        return result

    async def _until(self, due: float, *, yield_anyway: bool) -> None:
        """Sleep until ``due`` (perf_counter seconds).

        Event-loop timers fire on whole milliseconds, so with ``precise`` the last stretch is spent
        yielding to the loop instead: emissions land within a few microseconds of their schedule.
        Without it a chunk may leave up to a millisecond late, never early.
        """
        wait = due - time.perf_counter()
        if wait <= 0:
            if yield_anyway:
                await asyncio.sleep(0)
            return
        spin = _SPIN_S if self.model.precise else 0.0
        if wait > spin:
            await asyncio.sleep(wait - spin)
        while time.perf_counter() < due:  # noqa: ASYNC110 - timers fire up to 1 ms early; never emit early
            await asyncio.sleep(0)

    def _final(self, plan: _Plan, arrival_ns: int, emit_ns: list[int]) -> bytes:
        """The closing frames with usage and native timings measured from this request's own emissions."""
        load_ns = int(plan.load_s * 1e9)
        prefill_ns = emit_ns[0] - arrival_ns - load_ns
        decode_ns = emit_ns[-1] - emit_ns[0]
        name = self.model.model_name
        if plan.route in ("chat", "completions"):
            kind = "chat.completion.chunk" if plan.route == "chat" else "text_completion"
            stop: dict[str, object] = {"index": 0, "finish_reason": plan.finish_reason}
            if plan.route == "chat":
                stop["delta"] = {}
            else:
                stop["text"] = ""
            usage = {
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": plan.output_tokens,
                "total_tokens": plan.prompt_tokens + plan.output_tokens,
            }
            timings = {
                "prompt_n": plan.prompt_tokens,
                "prompt_ms": prefill_ns / 1e6,
                "predicted_n": plan.output_tokens,
                "predicted_ms": decode_ns / 1e6,
            }
            return (
                _sse({"id": "sim", "object": kind, "created": 0, "model": name, "choices": [stop]})
                + _sse(
                    {
                        "id": "sim",
                        "object": kind,
                        "created": 0,
                        "model": name,
                        "choices": [],
                        "usage": usage,
                        "timings": timings,
                    }
                )
                + _frame(b"data: [DONE]\n\n")
                + b"0\r\n\r\n"
            )
        final: dict[str, object] = {
            "model": name,
            "created_at": _CREATED_AT,
            "done": True,
            "done_reason": plan.finish_reason,
            "total_duration": time.perf_counter_ns() - arrival_ns,
            "load_duration": load_ns,
            "prompt_eval_count": plan.prompt_tokens,
            "prompt_eval_duration": prefill_ns,
            "eval_count": plan.output_tokens,
            "eval_duration": decode_ns,
        }
        if plan.route == "api_chat":
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        return _ndjson(final) + b"0\r\n\r\n"

    def _log(self, request_id: str | None, path: str, arrival_ns: int, plan: _Plan, result: _Result) -> None:
        assert self.log is not None
        row = {
            "request_id": request_id,
            "path": path,
            "arrival_ns": arrival_ns,
            "outcome": result.outcome,
            "prompt_tokens": plan.prompt_tokens,
            "output_tokens": plan.output_tokens,
            "load_ns": int(plan.load_s * 1e9),
            "emit_ns": result.emit_ns,
        }
        self.log.write(json.dumps(row, separators=(",", ":")) + "\n")


def _prompt_text(req: dict[str, object]) -> str:
    messages = req.get("messages")
    if isinstance(messages, list):
        return "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
    return str(req.get("prompt") or "")


def _max_tokens(route: str, req: dict[str, object]) -> int:
    if route.startswith("api_"):
        options = req.get("options")
        value = options.get("num_predict") if isinstance(options, dict) else None
    else:
        value = req.get("max_tokens") or req.get("max_completion_tokens")
    return value if isinstance(value, int) and value > 0 else 128


def _open_log(path: str) -> IO[str]:
    return open(path, "a", buffering=1 << 20, encoding="utf-8")


async def serve(
    model: SimModel,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    emission_log: str | None = None,
    stop: asyncio.Event,
    announce: Any = None,
) -> None:
    """Serve until ``stop`` is set; ``announce(address)`` is called once listening."""
    log = _open_log(emission_log) if emission_log else None
    sim = SimServer(model, log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(sim), host, port, backlog=4096)
    try:
        sock = server.sockets[0].getsockname()
        if announce is not None:
            announce(f"http://{sock[0]}:{sock[1]}")
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)
        if log is not None:
            log.close()


def main() -> int:
    """Child-process entry: config JSON in argv, address JSON out, serve until stdin closes or SIGTERM."""
    cfg = json.loads(sys.argv[1])
    model = SimModel.model_validate(cfg.get("model") or {})
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a core dependency
        runner = asyncio.run

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def watch_stdin() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_stdin, daemon=True).start()

        def announce(address: str) -> None:
            sys.stdout.write(json.dumps({"address": address, "pid": os.getpid()}) + "\n")
            sys.stdout.flush()

        await serve(
            model,
            port=int(cfg.get("port", 0)),
            emission_log=cfg.get("emission_log"),
            stop=stop,
            announce=announce,
        )

    runner(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
