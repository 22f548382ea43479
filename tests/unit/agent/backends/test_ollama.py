"""Ollama contract: NDJSON streams written from the API reference, split at every byte; a scripted server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from agent.backends import create
from agent.backends.ollama import OllamaStreamState, options_for, parse_line
from agent.core.errors import BackendError, RequestFailedError
from agent.core.record import Chunk, GenerationRequest, StreamEnd
from agent.transport.ndjson import LineSplitter

# /api/chat streaming as the API reference shows it: one object per line, the last with done: true and
# durations in nanoseconds.
CHAT_STREAM = (
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00",'
    b'"message":{"role":"assistant","content":"The"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.405406455-07:00",'
    b'"message":{"role":"assistant","content":" sky \xc3\xa9"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z",'
    b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
    b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n'
)
# /api/generate with a thinking model, and a final object whose prompt came from cache (no prompt_eval_*).
GENERATE_STREAM = (
    b'{"model":"qwen3","created_at":"2025-05-29T09:35:56.836222Z","response":"","thinking":"Hmm","done":false}\n'
    b'{"model":"qwen3","created_at":"2025-05-29T09:35:56.936222Z","response":"Blue","done":false}\n'
    b'{"model":"qwen3","created_at":"2025-05-29T09:35:57.036222Z","response":"","done":true,'
    b'"done_reason":"length","total_duration":9000000,"load_duration":2500000000,'
    b'"eval_count":2,"eval_duration":5000000}'  # no trailing newline: servers may omit it
)


def parse_all(body: bytes, splits: list[int]) -> tuple[list[tuple[str, bool]], OllamaStreamState]:
    state = OllamaStreamState()
    lines = LineSplitter()
    chunks: list[Chunk] = []
    prev = 0
    for cut in [*splits, len(body)]:
        for line in lines.feed(body[prev:cut]):
            chunks += parse_line(line, 0, state)
        prev = cut
    for line in lines.close():
        chunks += parse_line(line, 0, state)
    return [(c.text, c.reasoning) for c in chunks], state


@pytest.mark.parametrize("body", [CHAT_STREAM, GENERATE_STREAM], ids=["chat", "generate"])
def test_every_single_split_gives_the_same_events(body: bytes) -> None:
    whole = parse_all(body, [])
    for cut in range(1, len(body)):
        assert parse_all(body, [cut]) == whole, cut
    assert parse_all(body, list(range(1, len(body)))) == whole  # one byte at a time


def test_chat_final_object_converts_nanoseconds() -> None:
    chunks, state = parse_all(CHAT_STREAM, [])
    assert chunks == [("The", False), (" sky é", False)]
    assert state.done and state.finish_reason == "stop"
    native = state.native
    assert native is not None and native.source == "ollama"
    assert native.prefill_ms == pytest.approx(342.546)
    assert native.decode_ms == pytest.approx(4535.599)
    assert native.load_ms == pytest.approx(1.334875)
    assert native.total_ms == pytest.approx(4883.583458)
    assert (native.prompt_n, native.predicted_n) == (26, 282)
    assert native.cold_start is False
    assert state.usage is not None and (state.usage.prompt_tokens, state.usage.output_tokens) == (26, 282)


def test_cached_prompt_leaves_prefill_unknown_and_a_long_load_is_a_cold_start() -> None:
    chunks, state = parse_all(GENERATE_STREAM, [])
    assert chunks == [("Hmm", True), ("Blue", False)]
    native = state.native
    assert native is not None
    assert native.prefill_ms is None and native.prompt_n is None  # absent, not zero
    assert state.usage is not None and state.usage.prompt_tokens is None
    assert native.load_ms == pytest.approx(2500.0) and native.cold_start is True


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b'{"error":"model \\"x\\" not found"}', "server error"),
        (b"{not json", "malformed"),
        (b"[1,2]", "not an object"),
    ],
)
def test_bad_lines_become_invalid_response(line: bytes, needle: str) -> None:
    with pytest.raises(RequestFailedError) as info:
        parse_line(line, 0, OllamaStreamState())
    assert info.value.reason == "invalid_response" and needle in info.value.detail


def test_data_after_done_is_invalid() -> None:
    state = OllamaStreamState()
    parse_line(b'{"done":true,"eval_count":1}', 0, state)
    with pytest.raises(RequestFailedError):
        parse_line(b'{"response":"x","done":false}', 0, state)


def test_options_map_max_tokens_sampling_and_context() -> None:
    req = GenerationRequest(
        request_id="r", prompt="p", max_tokens=64, sampling={"temperature": 0, "seed": 7, "logit_bias": {}}
    )
    assert options_for(req, 8192) == {"num_predict": 64, "temperature": 0, "seed": 7, "num_ctx": 8192}


class OllamaScripted:
    """/api/chat, /api/generate, /api/tags, /api/version, /api/show, /api/ps with scripted bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.mode = "ok"
        self.url = ""
        self.loaded = True
        self.unloads = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> OllamaScripted:
        app = web.Application()
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/chat", self._gen)
        app.router.add_post("/api/generate", self._gen)
        app.router.add_post("/api/show", self._show)
        app.router.add_get("/api/ps", self._ps)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]})

    async def _ps(self, request: web.Request) -> web.Response:
        models = [{"name": "llama3.2:latest", "model": "llama3.2:latest"}] if self.loaded else []
        return web.json_response({"models": models})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.9.0"})

    async def _show(self, request: web.Request) -> web.Response:
        self.shown = (await request.json())["model"]
        if self.mode == "no-show":
            return web.json_response({"error": "not here"}, status=500)
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }
        info = {
            "general.architecture": "llama",
            "general.parameter_count": 3212749888,
            "llama.context_length": 131072,
        }
        return web.json_response({"modelfile": "FROM x", "details": details, "model_info": info})

    async def _gen(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("prompt") and request.path == "/api/generate" and body.get("keep_alive") == 0:
            self.loaded, self.unloads = False, self.unloads + 1  # the control plane's unload
            return web.json_response({"model": body["model"], "done": True, "done_reason": "unload"})
        self.bodies.append(body)
        if self.mode == "404":
            return web.json_response({"error": 'model "nope" not found, try pulling it first'}, status=404)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        self.loaded = True
        body = CHAT_STREAM if request.path == "/api/chat" else GENERATE_STREAM
        if self.mode == "truncated":
            body = body[: body.rindex(b'{"model"')]
        for i in range(0, len(body), 11):
            await resp.write(body[i : i + 11])
        await resp.write_eof()
        return resp


async def test_backend_streams_chat_and_generate_with_native_fields() -> None:
    async with OllamaScripted() as srv:
        backend = create("ollama", {"base_url": srv.url, "num_ctx": 2048, "keep_alive": "5m"})
        await backend.start()
        try:
            chat = GenerationRequest(
                request_id="a", messages=[{"role": "user", "content": "why?"}], max_tokens=9
            )
            events = [e async for e in backend.stream(chat)]
            gen = GenerationRequest(
                request_id="b",
                messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "sky?"}],
                endpoint="completions",
            )
            gen_events = [e async for e in backend.stream(gen)]
        finally:
            await backend.close()
    assert backend.model == "llama3.2:latest" and srv.shown == "llama3.2:latest"
    facts = backend.describe()["model_facts"]  # the control plane, read with the ollama package
    assert backend.describe()["ollama_version"] == "0.9.0" and backend.describe()["quantization"] == "Q4_K_M"
    assert facts == {
        "format": "gguf",
        "family": "llama",
        "parameter_size": "3.2B",
        "quantization": "Q4_K_M",
        "parameters": 3212749888,
        "context_length": 131072,
    }
    end = events[-1]
    assert (
        isinstance(end, StreamEnd)
        and end.native is not None
        and end.native.decode_ms == pytest.approx(4535.599)
    )
    assert srv.bodies[0]["options"] == {"num_predict": 9, "num_ctx": 2048}
    assert srv.bodies[0]["keep_alive"] == "5m" and srv.bodies[0]["stream"] is True
    assert srv.bodies[1]["prompt"] == "sky?" and srv.bodies[1]["system"] == "be brief"
    gen_end = gen_events[-1]
    assert isinstance(gen_end, StreamEnd) and gen_end.native is not None and gen_end.native.cold_start


async def test_backend_maps_http_errors_and_truncation() -> None:
    req = GenerationRequest(request_id="a", prompt="x")
    async with OllamaScripted() as srv:
        backend = create("ollama", {"base_url": srv.url, "model": "llama3.2"})
        await backend.start()
        try:
            srv.mode = "404"
            with pytest.raises(RequestFailedError) as info:
                [e async for e in backend.stream(req)]
            assert info.value.reason == "http_404" and "not found" in info.value.detail
            srv.mode = "truncated"
            with pytest.raises(RequestFailedError) as info:
                [e async for e in backend.stream(req)]
            assert info.value.reason == "invalid_response"
        finally:
            await backend.close()
    assert backend.model == "llama3.2:latest"  # named as the server lists it


async def test_a_model_the_server_lacks_is_one_clear_error_before_any_request() -> None:
    async with OllamaScripted() as srv:
        backend = create("ollama", {"base_url": srv.url, "model": "qwen3:8b"})
        with pytest.raises(BackendError, match=r"'qwen3:8b' is not on the server .*llama3.2:latest.*pull"):
            await backend.start()
        await backend.close()
    assert srv.bodies == []


async def test_unload_first_makes_the_run_start_cold_and_the_manifest_says_so() -> None:
    async with OllamaScripted() as srv:
        warm = create("ollama", {"base_url": srv.url})
        await warm.start()
        await warm.close()
        cold = create("ollama", {"base_url": srv.url, "unload_first": True})
        await cold.start()
        await cold.close()
    assert warm.describe()["loaded_before_run"] is True and warm.describe()["unloaded_first"] is False
    assert cold.describe()["loaded_before_run"] is False and cold.describe()["unloaded_first"] is True
    assert srv.unloads == 1


async def test_unreachable_server_says_what_to_do() -> None:
    backend = create("ollama", {"base_url": "http://127.0.0.1:9", "connect_timeout_s": 2})
    with pytest.raises(BackendError, match="ollama serve"):
        await backend.start()
    await backend.close()


def test_default_url_follows_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.backends.ollama import OllamaArgs

    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    assert OllamaArgs().base_url == "http://0.0.0.0:11434"
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:4000")
    assert OllamaArgs().base_url == "http://127.0.0.1:4000"
    monkeypatch.delenv("OLLAMA_HOST")
    assert json.dumps(OllamaArgs().base_url) == '"http://127.0.0.1:11434"'


async def test_a_server_without_api_show_still_runs_and_says_why() -> None:
    async with OllamaScripted() as srv:
        srv.mode = "no-show"
        backend = create("ollama", {"base_url": srv.url})
        await backend.start()
        await backend.close()
    facts = backend.describe()["model_facts"]
    assert facts["unavailable"].startswith("/api/show: ResponseError")
