"""A scripted OpenAI-style SSE server on 127.0.0.1 for contract tests (not the simulator)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

FINAL = {
    "choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
    "usage": {"completion_tokens": 3, "prompt_tokens": 7},
    "timings": {"prompt_n": 7, "prompt_ms": 1.5, "predicted_n": 3, "predicted_ms": 2.5},
}


def sse_body(
    words: list[str], final: dict[str, Any] | None = FINAL, done: bool = True, keep_alive: bool = True
) -> bytes:
    parts = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n\n']
    for w in words:
        parts.append(
            b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": w}}]}).encode() + b"\n\n"
        )
        if keep_alive:
            parts.append(b": keep-alive\n\n")
    if final is not None:
        parts.append(b"data: " + json.dumps(final).encode() + b"\n\n")
    if done:
        parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


Behaviour = Callable[[web.Request], Any]


class ScriptedServer:
    """Serves /v1/models and /v1/chat/completions; ``mode`` picks the behaviour of the next requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        #: the id ``/v1/models`` lists (llama.cpp's server lists its GGUF's path)
        self.model_id = "scripted-model"
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.close_after_stream = False
        #: mode "paced": seconds between events, and whether comment lines come between words
        self.gap_s = 0.04
        self.keep_alive = True
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model_id}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body_in = await request.json()
        self.bodies.append(body_in)
        self.headers.append(dict(request.headers))
        mode = self.mode
        if mode.startswith("http_"):
            return web.Response(status=int(mode[5:]), text='{"error": "scripted"}')
        if body_in.get("stream") is False:  # the whole answer in one body
            message = {"role": "assistant", "content": "Hello there friend"}
            return web.json_response(
                {
                    "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                    "usage": FINAL["usage"],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if self.close_after_stream:
            resp.force_close()
        await resp.prepare(request)
        if mode == "ok":
            body = sse_body(["Hello", " there", " friend"])
        elif mode == "malformed":
            body = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\ndata: {broken\n\n'
        elif mode == "no_done":
            body = sse_body(["a", "b"], final=None, done=False)
        elif mode == "paced":  # one event per write, ``gap_s`` apart
            events = sse_body(["Hello", " there", " friend"], keep_alive=self.keep_alive).split(b"\n\n")
            for event in events[:-1]:
                await resp.write(event + b"\n\n")
                await asyncio.sleep(self.gap_s)
            await resp.write_eof()
            return resp
        elif mode == "drop":
            await resp.write(sse_body(["a"], final=None, done=False))
            await asyncio.sleep(0.01)
            assert request.transport is not None
            request.transport.abort()
            return resp
        else:
            raise AssertionError(mode)
        for i in range(0, len(body), 7):  # odd-sized writes: events split across reads
            await resp.write(body[i : i + 7])
        await resp.write_eof()
        return resp
