from __future__ import annotations

import itertools

import pytest

from agent.backends import create
from agent.backends.openai import model_label
from agent.core.errors import BackendError, RequestFailedError
from agent.core.record import Chunk, GenerationRequest, StreamEnd, StreamEvent
from tests.sse_server import ScriptedServer


async def collect(backend: object, req: GenerationRequest) -> list[StreamEvent]:
    return [ev async for ev in backend.stream(req)]  # type: ignore[attr-defined]


REQ = GenerationRequest(
    request_id="r1", prompt="hi", max_tokens=3, sampling={"temperature": 0}, ignore_eos=True, endpoint="chat"
)


async def test_streams_text_usage_and_native_timings() -> None:
    async with ScriptedServer() as srv:
        backend = create("openai", {"base_url": srv.url})
        await backend.start()
        try:
            events = await collect(backend, REQ)
        finally:
            await backend.close()
    assert backend.model == "scripted-model"
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert "".join(c.text for c in chunks) == "Hello there friend"
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "length"
    assert end.usage is not None and end.usage.output_tokens == 3
    assert end.native is not None and (end.native.prefill_ms, end.native.decode_ms) == (1.5, 2.5)
    assert all(a.t_ns <= b.t_ns for a, b in itertools.pairwise(chunks)) and chunks[-1].t_ns <= end.t_ns
    body = srv.bodies[0]
    assert body["stream"] is True and body["max_tokens"] == 3 and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["ignore_eos"] is True and body["cache_prompt"] is False


async def test_completions_endpoint_and_no_engine_fields() -> None:
    async with ScriptedServer() as srv:
        backend = create("openai", {"base_url": srv.url, "model": "m", "engine_fields": False})
        await backend.start()
        try:
            req = GenerationRequest(request_id="r2", prompt="The sky is", endpoint="completions")
            await collect(backend, req)
        finally:
            await backend.close()
    assert srv.bodies[0]["prompt"] == "The sky is" and srv.bodies[0]["model"] == "m"
    assert "ignore_eos" not in srv.bodies[0] and "cache_prompt" not in srv.bodies[0]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("http_503", "http_503"),
        ("malformed", "invalid_response"),
        ("no_done", "invalid_response"),
        ("drop", "connection_reset"),
    ],
)
async def test_failures_map_to_reasons(mode: str, reason: str) -> None:
    async with ScriptedServer() as srv:
        backend = create("openai", {"base_url": srv.url, "model": "m"})
        await backend.start()
        srv.mode = mode
        try:
            with pytest.raises(RequestFailedError) as ei:
                await collect(backend, REQ)
        finally:
            await backend.close()
    assert ei.value.reason == reason


async def test_refused_connection() -> None:
    async with ScriptedServer() as srv:
        url = srv.url
    backend = create("openai", {"base_url": url, "model": "m"})
    await backend.start()
    try:
        with pytest.raises(RequestFailedError) as ei:
            await collect(backend, REQ)
    finally:
        await backend.close()
    assert ei.value.reason == "connection"


async def test_server_that_closes_after_every_stream_never_fails_a_request() -> None:
    async with ScriptedServer() as srv:
        srv.close_after_stream = True
        backend = create("openai", {"base_url": srv.url, "model": "m"})
        await backend.start()
        try:
            for _ in range(6):
                events = await collect(backend, REQ)
                assert isinstance(events[-1], StreamEnd)
        finally:
            await backend.close()


async def test_model_discovery_failure_is_a_clear_error() -> None:
    async with ScriptedServer() as srv:
        url = srv.url
    backend = create("openai", {"base_url": url})
    with pytest.raises(BackendError, match="pass --model"):
        await backend.start()
    await backend.close()


def test_unknown_backend_and_bad_args() -> None:
    from agent.core.errors import ConfigError, UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'openai'"):
        create("opnai", {})
    with pytest.raises(ConfigError, match="max_connections"):
        create("openai", {"max_connections": 0})
    with pytest.raises(ConfigError, match="bogus"):
        create("openai", {"bogus": 1})


@pytest.mark.parametrize(
    ("model_id", "label"),
    [
        ("/models/gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m-Q4_K_M"),
        ("gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m-Q4_K_M"),
        ("/srv/models/llama-3-8b", "llama-3-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("scripted-model", "scripted-model"),
    ],
)
def test_a_discovered_model_path_becomes_a_short_label(model_id: str, label: str) -> None:
    assert model_label(model_id) == label


async def test_requests_still_name_the_servers_own_model_id() -> None:
    async with ScriptedServer() as srv:
        srv.model_id = "/models/tiny.gguf"
        backend = create("openai", {"base_url": srv.url})
        await backend.start()
        try:
            await collect(backend, REQ)
        finally:
            await backend.close()
    assert backend.model == "tiny"
    assert srv.bodies[0]["model"] == "/models/tiny.gguf"


async def test_a_request_carries_its_headers_extra_body_model_and_length_floor() -> None:
    async with ScriptedServer() as srv:
        backend = create("openai", {"base_url": srv.url})
        await backend.start()
        try:
            req = GenerationRequest(
                request_id="r9",
                prompt="hi",
                max_tokens=3,
                ignore_eos=True,
                endpoint="chat",
                model="my-lora",
                headers={"X-Tenant": "blue"},
                extra_body={"repetition_penalty": 1.1},
            )
            await collect(backend, req)
        finally:
            await backend.close()
    body, headers = srv.bodies[0], srv.headers[0]
    assert body["model"] == "my-lora" and body["repetition_penalty"] == 1.1
    assert body["min_tokens"] == 3  # vLLM enforces the length only with a floor
    assert headers["X-Tenant"] == "blue" and headers["X-Request-ID"] == "r9"


async def test_a_non_streaming_request_is_one_chunk_at_the_end_of_the_body() -> None:
    async with ScriptedServer() as srv:
        backend = create("openai", {"base_url": srv.url})
        await backend.start()
        try:
            events = await collect(backend, GenerationRequest(request_id="r10", prompt="hi", stream=False))
        finally:
            await backend.close()
    assert srv.bodies[0]["stream"] is False and "stream_options" not in srv.bodies[0]
    (chunk,) = [e for e in events if isinstance(e, Chunk)]
    end = events[-1]
    assert chunk.text == "Hello there friend" and isinstance(end, StreamEnd) and end.t_ns == chunk.t_ns
    assert end.usage is not None and end.usage.output_tokens == 3 and end.finish_reason == "length"
