"""An Ollama-protocol face over the embedded llama.cpp engine — an EMULATION for tests, not Ollama.

No Ollama server can be installed where these tests run, so this face speaks Ollama's HTTP API
(``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/version``, and the control plane's
``/api/show`` and ``/api/ps`` with the model file's own GGUF facts) and forwards every request to the
real embedded engine. Each streamed token is relayed as one NDJSON line the moment it arrives; the final
object carries llama.cpp's real ``timings`` converted to nanoseconds (``prompt_ms`` →
``prompt_eval_duration``, ``predicted_ms`` → ``eval_duration``), the face's own measured
``total_duration``, and ``load_duration`` = the measured engine start for the first request (a cold start)
and 0 afterwards. ``/api/version`` answers ``0.0.0-infermeter-emulation`` so nothing mistakes it for Ollama.

Run: ``python -m tests.ollama_face [--model-path F.gguf] [--timings-log F.jsonl]``; it prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from agent.backends.builtin_model import ensure_builtin_model
from agent.backends.child import ChildServer
from agent.backends.modelfacts import gguf_facts
from agent.transport.sse import SSEParser

VERSION = "0.0.0-infermeter-emulation"
MODEL = "gemma3-270m-emulated"


class OllamaFace:
    """Starts the engine, then relays Ollama API calls to it."""

    def __init__(self, model_path: Path, timings_log: Path | None, n_parallel: int = 4) -> None:
        self.model_path = model_path
        self.n_parallel = n_parallel
        self.engine = ChildServer("agent.backends._engine_main", "engine")
        self.engine_url = ""
        self.load_ns = 0
        self._cold = True
        self._session: aiohttp.ClientSession | None = None
        self._log = timings_log.open("a", encoding="utf-8") if timings_log else None

    async def start(self) -> None:
        t0 = time.perf_counter_ns()
        cfg = {"model_path": str(self.model_path), "n_parallel": self.n_parallel,
               "n_ctx": self.n_parallel * 4096, "threads": None, "chat_template": "gemma"}  # fmt: skip
        self.engine_url = await self.engine.start(cfg, 180)
        self.load_ns = time.perf_counter_ns() - t0
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.engine.stop()
        if self._log is not None:
            self._log.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._generate)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/show", self._show)
        app.router.add_get("/api/ps", self._ps)
        return app

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    def _details(self) -> dict[str, Any]:
        facts = gguf_facts(self.model_path)
        size = f"{facts['parameters'] / 1e6:.2f}M" if facts.get("parameters") else None
        return {"parent_model": "", "format": "gguf", "family": facts.get("architecture"),
                "families": [facts.get("architecture")], "parameter_size": size,
                "quantization_level": facts.get("quantization")}  # fmt: skip

    async def _tags(self, request: web.Request) -> web.Response:
        size = self.model_path.stat().st_size
        entry = {"name": MODEL, "model": MODEL, "size": size, "details": self._details()}
        return web.json_response({"models": [entry]})

    async def _show(self, request: web.Request) -> web.Response:
        req = await request.json()
        if req.get("model") != MODEL:
            return web.json_response({"error": f"model '{req.get('model')}' not found"}, status=404)
        facts = gguf_facts(self.model_path)
        arch = facts.get("architecture")
        info = {"general.architecture": arch, "general.parameter_count": facts.get("parameters"),
                f"{arch}.context_length": facts.get("context_length")}  # fmt: skip
        body = {"modelfile": f"FROM {self.model_path.name}", "parameters": "", "template": "",
                "details": self._details(), "model_info": info, "capabilities": ["completion"]}  # fmt: skip
        return web.json_response(body)

    async def _ps(self, request: web.Request) -> web.Response:
        entry = {"name": MODEL, "model": MODEL, "size": self.model_path.stat().st_size, "digest": "",
                 "details": self._details(), "size_vram": 0}  # fmt: skip
        return web.json_response({"models": [] if self._cold else [entry]})

    def _engine_body(self, chat: bool, req: dict[str, Any]) -> dict[str, Any]:
        options = req.get("options") or {}
        body: dict[str, Any] = {"stream": True, "cache_prompt": False}
        body["max_tokens"] = options.get("num_predict", 128)
        for key in ("temperature", "top_p", "top_k", "seed", "stop"):
            if key in options:
                body[key] = options[key]
        if chat:
            body["messages"] = req["messages"]
        else:
            body["prompt"] = (req.get("system", "") + "\n\n" if req.get("system") else "") + req["prompt"]
        return body

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter_ns()
        req = await request.json()
        chat = request.path == "/api/chat"
        if req.get("model") not in (MODEL, None):
            return web.json_response({"error": f'model "{req.get("model")}" not found'}, status=404)
        load_ns, self._cold = (self.load_ns if self._cold else 0), False
        assert self._session is not None
        url = self.engine_url + ("/v1/chat/completions" if chat else "/v1/completions")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        timings: dict[str, Any] = {}
        finish = "stop"
        parser = SSEParser()
        async with self._session.post(url, json=self._engine_body(chat, req)) as up:
            async for data in up.content.iter_any():
                for ev in parser.feed(data):
                    if ev.data == "[DONE]":
                        continue
                    obj = json.loads(ev.data)
                    timings = obj.get("timings") or timings
                    for choice in obj.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if text:
                            await resp.write(_line(req, chat, text))
        final = {
            "model": MODEL,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "done": True,
            "done_reason": finish,
            "total_duration": time.perf_counter_ns() - arrival + load_ns,
            "load_duration": load_ns,
            "prompt_eval_count": timings.get("prompt_n"),
            "prompt_eval_duration": round(timings.get("prompt_ms", 0.0) * 1e6),
            "eval_count": timings.get("predicted_n"),
            "eval_duration": round(timings.get("predicted_ms", 0.0) * 1e6),
        }
        final.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        await resp.write(json.dumps(final).encode() + b"\n")
        await resp.write_eof()
        if self._log is not None:
            row = {"request_id": request.headers.get("X-Request-Id"), "timings": timings}
            self._log.write(json.dumps(row) + "\n")
            self._log.flush()
        return resp


def _line(req: dict[str, Any], chat: bool, text: str) -> bytes:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    obj: dict[str, Any] = {"model": MODEL, "created_at": created, "done": False}
    obj.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
    return json.dumps(obj).encode() + b"\n"


async def _main(ns: argparse.Namespace) -> int:
    # stdout carries only the URL
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    path = ns.model_path or ensure_builtin_model(ns.cache_dir)
    face = OllamaFace(path, ns.timings_log, ns.n_parallel)
    await face.start()
    runner = web.AppRunner(face.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", ns.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sys.stdout.write(f"http://127.0.0.1:{port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await face.stop()
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Ollama-protocol EMULATION over the embedded engine (for tests)")
    p.add_argument("--model-path", type=Path)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "infermeter")
    p.add_argument("--timings-log", type=Path, help="JSONL of the engine's raw timings per request id")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--n-parallel", type=int, default=4)
    raise SystemExit(asyncio.run(_main(p.parse_args())))
