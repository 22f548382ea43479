"""An Ollama-protocol face over the embedded llama.cpp engine — an EMULATION of Ollama, not Ollama.

Where no Ollama server can be had (a CI machine, a laptop without it) this face lets the ``ollama``
backend, its control plane and a study's Ollama variant run end to end against a real engine. It speaks
Ollama's HTTP API — ``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/version``, ``/api/show``,
``/api/ps`` — and forwards every generation to the embedded engine, relaying each streamed token as one
NDJSON line the moment it arrives. The final object carries llama.cpp's real ``timings`` converted to
nanoseconds (``prompt_ms`` → ``prompt_eval_duration``, ``predicted_ms`` → ``eval_duration``), the face's own
measured ``total_duration``, and ``load_duration``: the measured engine start for the first request after a
load (a cold start), 0 afterwards.

Loading follows Ollama: ``/api/generate`` without a prompt loads the model, or unloads it when
``keep_alive`` is 0 (the engine process stops; the next request starts it again and pays the load);
``/api/ps`` lists the model while it is loaded. ``/api/version`` answers ``0.0.0-infermeter-emulation`` so
no record mistakes it for Ollama, and the relay hop is in every wall-clock figure measured through it.

Started by ``infermeter serve --api ollama``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import IO

import aiohttp
from aiohttp import web

from agent.backends._engine_main import EngineConfig
from agent.backends.child import ChildServer
from agent.backends.modelfacts import gguf_facts
from agent.transport.sse import SSEParser

__all__ = ["MODEL", "VERSION", "OllamaFace"]

VERSION = "0.0.0-infermeter-emulation"
MODEL = "gemma3-270m-emulated"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class OllamaFace:
    """Owns the engine process and answers Ollama API calls with it."""

    def __init__(
        self,
        model_path: Path,
        *,
        timings_log: Path | None = None,
        n_parallel: int = 4,
        threads: int | None = None,
        chat_template: str | None = "gemma",
    ) -> None:
        self.model_path = model_path
        self.cfg: EngineConfig = {
            "model_path": str(model_path),
            "n_parallel": n_parallel,
            "n_ctx": n_parallel * 4096,
            "threads": threads,
            "chat_template": chat_template,
            "port": 0,
            "swa_full": False,
        }
        self.engine = ChildServer("agent.backends._engine_main", "engine")
        self.engine_url = ""
        self._load_ns = 0  # the last load, reported once by the request that follows it
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._log: IO[str] | None = timings_log.open("a", encoding="utf-8") if timings_log else None

    @property
    def loaded(self) -> bool:
        """Whether the engine process runs."""
        return self.engine.proc is not None

    async def start(self) -> None:
        """Open the relay session and load the model (the first request reports that load)."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._lock:
            await self._load()

    async def _load(self) -> bool:
        """Start the engine unless it runs (the lock held); whether it was started now."""
        if self.loaded:
            return False
        t0 = time.perf_counter_ns()
        self.engine_url = await self.engine.start(self.cfg, 180)
        self._load_ns = time.perf_counter_ns() - t0
        return True

    async def _ensure_loaded(self) -> tuple[int, bool]:
        """Load the model for a request unless it is loaded.

        Returns the load this request reports (the last load, once; 0 when warm) and whether that load
        happened before the request arrived (then it is added to the request's total, as Ollama does).
        """
        async with self._lock:
            now = await self._load()
            load_ns, self._load_ns = self._load_ns, 0
            return load_ns, not now

    async def unload(self) -> None:
        """Stop the engine process (Ollama's ``keep_alive: 0``)."""
        async with self._lock:
            await self.engine.stop()
            self._load_ns = 0

    async def stop(self) -> None:
        """Close the relay and stop the engine."""
        if self._session is not None:
            await self._session.close()
        await self.engine.stop()
        if self._log is not None:
            self._log.close()

    def app(self) -> web.Application:
        """The aiohttp application serving the API."""
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

    def _details(self) -> dict[str, object]:
        facts = gguf_facts(self.model_path)
        parameters = facts.get("parameters")
        size = f"{parameters / 1e6:.2f}M" if isinstance(parameters, int | float) and parameters else None
        return {
            "parent_model": "",
            "format": "gguf",
            "family": facts.get("architecture"),
            "families": [facts.get("architecture")],
            "parameter_size": size,
            "quantization_level": facts.get("quantization"),
        }

    def _entry(self) -> dict[str, object]:
        return {
            "name": MODEL,
            "model": MODEL,
            "size": self.model_path.stat().st_size,
            "digest": "",
            "modified_at": _now(),
            "details": self._details(),
        }

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self._entry()]})

    async def _show(self, request: web.Request) -> web.Response:
        req = await request.json()
        if req.get("model") != MODEL:
            return web.json_response({"error": f"model '{req.get('model')}' not found"}, status=404)
        facts = gguf_facts(self.model_path)
        arch = facts.get("architecture")
        info = {
            "general.architecture": arch,
            "general.parameter_count": facts.get("parameters"),
            f"{arch}.context_length": facts.get("context_length"),
        }
        body = {
            "modelfile": f"FROM {self.model_path.name}",
            "parameters": "",
            "template": "",
            "details": self._details(),
            "model_info": info,
            "capabilities": ["completion"],
        }
        return web.json_response(body)

    async def _ps(self, request: web.Request) -> web.Response:
        entry = {**self._entry(), "size_vram": 0, "expires_at": "0001-01-01T00:00:00Z"}
        return web.json_response({"models": [entry] if self.loaded else []})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter_ns()
        req = await request.json()
        chat = request.path == "/api/chat"
        if req.get("model") not in (MODEL, None):
            return web.json_response({"error": f'model "{req.get("model")}" not found'}, status=404)
        if not (req.get("messages") if chat else req.get("prompt")):
            return await self._load_or_unload(req, chat)
        load_ns, earlier = await self._ensure_loaded()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        timings, finish = await self._relay(req, chat, resp)
        final = {
            "model": MODEL,
            "created_at": _now(),
            "done": True,
            "done_reason": finish,
            "total_duration": time.perf_counter_ns() - arrival + (load_ns if earlier else 0),
            "load_duration": load_ns,
            "prompt_eval_count": timings.get("prompt_n"),
            "prompt_eval_duration": round(timings.get("prompt_ms", 0.0) * 1e6),
            "eval_count": timings.get("predicted_n"),
            "eval_duration": round(timings.get("predicted_ms", 0.0) * 1e6),
        }
        final.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        await resp.write(json.dumps(final).encode() + b"\n")
        await resp.write_eof()
        if req.get("keep_alive") in (0, "0", "0s"):
            await self.unload()
        if self._log is not None:
            row = {"request_id": request.headers.get("X-Request-Id"), "timings": timings}
            self._log.write(json.dumps(row) + "\n")
            self._log.flush()
        return resp

    async def _load_or_unload(self, req: dict[str, object], chat: bool) -> web.Response:
        """An empty request loads the model, or unloads it with ``keep_alive: 0``, as Ollama does."""
        if req.get("keep_alive") in (0, "0", "0s"):
            await self.unload()
            reason = "unload"
        else:
            await self._ensure_loaded()
            reason = "load"
        body: dict[str, object] = {"model": MODEL, "created_at": _now(), "done": True, "done_reason": reason}
        body.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        return web.json_response(body)

    def _engine_body(self, chat: bool, req: dict[str, object]) -> dict[str, object]:
        given = req.get("options")
        options = given if isinstance(given, dict) else {}
        body: dict[str, object] = {"stream": True, "cache_prompt": False}
        body["max_tokens"] = options.get("num_predict", 128)
        for key in ("temperature", "top_p", "top_k", "seed", "stop"):
            if key in options:
                body[key] = options[key]
        if chat:
            body["messages"] = req["messages"]
        else:
            system = req.get("system")
            body["prompt"] = (f"{system}\n\n" if system else "") + str(req["prompt"])
        return body

    async def _relay(
        self, req: dict[str, object], chat: bool, resp: web.StreamResponse
    ) -> tuple[dict[str, float], str]:
        """Stream the engine's answer out as NDJSON lines; the engine's timings and finish reason."""
        assert self._session is not None
        url = self.engine_url + ("/v1/chat/completions" if chat else "/v1/completions")
        timings: dict[str, float] = {}
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
                            await resp.write(_line(chat, text))
        return timings, finish


def _line(chat: bool, text: str) -> bytes:
    obj: dict[str, object] = {"model": MODEL, "created_at": _now(), "done": False}
    obj.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
    return json.dumps(obj).encode() + b"\n"
