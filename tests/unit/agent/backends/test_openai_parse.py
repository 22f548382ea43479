from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backends.openai import _StreamState, parse_payload
from agent.core.errors import RequestFailedError
from agent.transport.sse import SSEParser


def chunk(**delta: object) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def test_role_only_delta_is_not_text() -> None:
    st = _StreamState()
    assert parse_payload(chunk(role="assistant", content=None), 1, st) == []


def test_content_delta() -> None:
    st = _StreamState()
    [c] = parse_payload(chunk(content="Hello"), 5, st)
    assert (c.t_ns, c.text, c.reasoning) == (5, "Hello", False)


def test_reasoning_then_answer_in_one_payload() -> None:
    st = _StreamState()
    out = parse_payload(chunk(reasoning_content="think", content="answer"), 9, st)
    assert [(c.text, c.reasoning) for c in out] == [("think", True), ("answer", False)]


def test_completions_text() -> None:
    st = _StreamState()
    payload = json.dumps({"choices": [{"text": " Paris", "index": 0, "finish_reason": None}]})
    assert [c.text for c in parse_payload(payload, 1, st)] == [" Paris"]


def test_final_chunk_with_llamacpp_timings_and_usage() -> None:
    st = _StreamState()
    final = {
        "choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
        "usage": {
            "completion_tokens": 16,
            "prompt_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
        "timings": {"prompt_n": 29, "prompt_ms": 87.95, "predicted_n": 16, "predicted_ms": 195.824},
    }
    assert parse_payload(json.dumps(final), 1, st) == []
    assert st.finish_reason == "length"
    assert st.usage is not None and (st.usage.prompt_tokens, st.usage.output_tokens) == (29, 16)
    assert st.usage.cached_prompt_tokens == 3
    assert st.native is not None and (st.native.prefill_ms, st.native.decode_ms) == (87.95, 195.824)
    assert st.native.source == "llamacpp_timings"


def test_done_marker() -> None:
    st = _StreamState()
    assert parse_payload("[DONE]", 1, st) == [] and st.done


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"str"', '{"error": {"message": "boom"}}'])
def test_bad_payloads_raise_invalid_response(bad: str) -> None:
    with pytest.raises(RequestFailedError) as ei:
        parse_payload(bad, 1, _StreamState())
    assert ei.value.reason == "invalid_response"


def test_empty_choices_and_usage_only_chunk() -> None:
    st = _StreamState()
    assert parse_payload(json.dumps({"choices": [], "usage": {"completion_tokens": 2}}), 1, st) == []
    assert st.usage is not None and st.usage.output_tokens == 2


def test_vllm_per_request_metrics_become_native_queue_and_server_ttft() -> None:
    state = _StreamState()
    payload = {
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
        "metrics": {
            "time_to_first_token_ms": 41.5,
            "generation_time_ms": 90.0,
            "queue_time_ms": 3.25,
            "mean_itl_ms": 12.1,
            "tokens_per_second": 80.0,
        },
    }
    assert parse_payload(json.dumps(payload), 0, state) == []
    native = state.native
    assert native is not None and native.source == "vllm_metrics"
    assert (native.queue_ms, native.server_ttft_ms) == (3.25, 41.5)
    assert native.prefill_ms is None and native.decode_ms is None  # vLLM gives no split: none invented


def test_llamacpp_timings_win_over_vllm_metrics() -> None:
    state = _StreamState()
    parse_payload(json.dumps({"timings": {"prompt_ms": 1.0, "predicted_ms": 2.0}}), 0, state)
    parse_payload(json.dumps({"metrics": {"queue_time_ms": 1.0}}), 0, state)
    assert state.native is not None and state.native.source == "llamacpp_timings"


def test_openai_backend_asks_for_vllm_metrics_only_when_told() -> None:
    from agent.backends.openai import OpenAIArgs, OpenAIBackend
    from agent.core.record import GenerationRequest

    req = GenerationRequest(request_id="r", prompt="x")
    assert "include_metrics" not in OpenAIBackend(OpenAIArgs(model="m"))._body(req, "chat")
    assert (
        OpenAIBackend(OpenAIArgs(model="m", request_metrics=True))._body(req, "chat")["include_metrics"]
        is True
    )


FAST_CASES = [
    b'{"id":"x","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{"content":"say \\"hi\\"\\n"},"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{"content":"caf\xc3\xa9 \\u20ac"},"finish_reason":null}]}',
    b'{"choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b'{"choices":[{"delta":{"content":"x"},"finish_reason":null}],"timings":{"prompt_ms":1.5}}',
    b'{"choices": [{"delta": {"content": "spaced"}, "finish_reason": null}]}',
]


@pytest.mark.parametrize("payload", FAST_CASES)
def test_the_fast_path_agrees_with_the_full_parser_or_steps_aside(payload: bytes) -> None:
    from agent.backends.openai import _read_chunks, fast_payload

    slow_state, fast_state = _StreamState(), _StreamState()
    slow = parse_payload(payload.decode(), 7, slow_state)
    fast = _read_chunks([payload], 7, fast_state)
    assert [(c.text, c.reasoning) for c in fast] == [(c.text, c.reasoning) for c in slow]
    assert fast_state == slow_state
    if b"usage" in payload or b"timings" in payload or b'"length"' in payload or b"\\" in payload:
        assert fast_payload(payload) is None  # anything beyond plain text takes the full parser


def test_one_read_with_many_chunks_becomes_one_counted_event() -> None:
    from agent.backends.openai import _read_chunks

    reads = [b'{"choices":[{"delta":{"content":"w%d "},"finish_reason":null}]}' % i for i in range(5)]
    (chunk,) = _read_chunks(reads, 9, _StreamState())
    assert (chunk.count, chunk.text, chunk.t_ns) == (5, "w0 w1 w2 w3 w4 ", 9)


EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm "},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"q\\"uote"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"caf\xc3\xa9"},"finish_reason":null}]}\n\n',
    b": keep-alive\n\n",
    b'data:{"choices":[{"delta":{"content":"nospace"},"finish_reason":null}]}\n\n',
]
CLOSING = (
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n'
    b"data: [DONE]\n\n"
)


def totals(chunks: list[Any]) -> tuple[int, str, int, str]:
    answer = [c for c in chunks if not c.reasoning]
    reasoning = [c for c in chunks if c.reasoning]
    return (
        sum(c.count for c in answer),
        "".join(c.text for c in answer),
        sum(c.count for c in reasoning),
        "".join(c.text for c in reasoning),
    )


def through_reader(stream: bytes, cuts: list[int], *, text: bool) -> tuple[list[Any], Any]:
    """The stream fed to a ChunkReader in reads cut at ``cuts``: its chunks and final state."""
    from agent.backends.openai import ChunkReader, _StreamState

    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    state = _StreamState()
    reader = ChunkReader(state, text=text)
    chunks: list[Any] = []
    for a, b in itertools.pairwise(bounds):
        chunks += reader.feed(stream[a:b], 1)
    for ev in reader.close():
        chunks += parse_payload(ev.data, 1, state)
    return chunks, state


def event_by_event(stream: bytes) -> tuple[list[Any], Any]:
    """The reference: the full SSE rules and a JSON parse per event."""
    from agent.backends.openai import _StreamState

    state = _StreamState()
    chunks: list[Any] = []
    for ev in SSEParser().feed(stream):
        chunks += parse_payload(ev.data, 1, state)
    return chunks, state


@given(st.lists(st.integers(0, len(EVENTS) - 1), max_size=40), st.lists(st.integers(0, 4000), max_size=8))
def test_whole_read_fast_path_equals_event_by_event_parsing(picks: list[int], cuts: list[int]) -> None:
    stream = b"".join(EVENTS[i] for i in picks) + CLOSING
    fast, fast_state = through_reader(stream, cuts, text=True)
    slow, slow_state = event_by_event(stream)
    assert totals(fast) == totals(slow)
    assert fast_state == slow_state and fast_state.done and fast_state.usage is not None


@given(st.lists(st.integers(0, len(EVENTS) - 1), max_size=40), st.lists(st.integers(0, 4000), max_size=8))
def test_counting_without_text_gives_the_same_chunks_and_state(picks: list[int], cuts: list[int]) -> None:
    stream = b"".join(EVENTS[i] for i in picks) + CLOSING
    counted, state = through_reader(stream, cuts, text=False)
    slow, slow_state = event_by_event(stream)
    answer, _, reasoning, _ = totals(slow)
    assert totals(counted)[0] == answer and totals(counted)[2] == reasoning
    assert state == slow_state


def test_a_null_usage_on_every_event_keeps_the_fast_path_and_the_final_usage() -> None:
    from agent.backends.openai import ChunkReader, _StreamState

    ordinary = (
        b'data: {"choices":[{"index":0,"delta":{"content":"w"},"finish_reason":null}],"usage":null}\n\n'
    )
    closing = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":50}}\n\ndata: [DONE]\n\n'
    )
    state = _StreamState()
    chunks = ChunkReader(state).feed(ordinary * 50 + closing, 5)
    assert [(c.count, c.text) for c in chunks] == [(50, "w" * 50)]
    assert state.done and state.finish_reason == "stop" and state.usage is not None
    assert state.usage.output_tokens == 50


def lp_event(token: str, alts: dict[str, float], *, chat: bool = True) -> bytes:
    """An event as llama.cpp's server streams it with logprobs on (chat delta or completions text)."""
    tops = [
        {"id": i, "token": t, "bytes": list(t.encode()), "logprob": lp}
        for i, (t, lp) in enumerate(alts.items())
    ]
    entry = {"id": 0, "token": token, "logprob": alts[token], "top_logprobs": tops}
    choice: dict[str, Any] = {"finish_reason": None, "index": 0, "logprobs": {"content": [entry]}}
    choice.update({"delta": {"content": token}} if chat else {"text": token})
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


@pytest.mark.parametrize("chat", [True, False])
def test_logprobs_of_the_first_positions_are_kept(chat: bool) -> None:
    from agent.backends.openai import ChunkReader
    from agent.core.record import LOGPROB_POSITIONS

    events = [lp_event(f"t{i}", {f"t{i}": -0.1, "x": -2.5}, chat=chat) for i in range(LOGPROB_POSITIONS + 3)]
    stream = b"".join(events) + b"data: [DONE]\n\n"
    state = _StreamState(logprobs=[])
    reader = ChunkReader(state, text=True, endpoint="chat" if chat else "completions", full=True)
    chunks = reader.feed(stream[:37], 1) + reader.feed(stream[37:], 2)
    assert "".join(c.text for c in chunks) == "".join(f"t{i}" for i in range(LOGPROB_POSITIONS + 3))
    assert sum(c.count for c in chunks) == LOGPROB_POSITIONS + 3
    assert state.logprobs == [{f"t{i}": -0.1, "x": -2.5} for i in range(LOGPROB_POSITIONS)]
    # without asking, the same stream keeps none (and the fast path may skip the events entirely)
    plain = _StreamState()
    through = ChunkReader(plain, text=True, endpoint="chat" if chat else "completions")
    assert sum(c.count for c in through.feed(stream, 1)) == LOGPROB_POSITIONS + 3
    assert plain.logprobs is None


def test_legacy_completions_logprobs_format() -> None:
    state = _StreamState(logprobs=[])
    payload = {
        "choices": [{"text": "a", "logprobs": {"tokens": ["a"], "top_logprobs": [{"a": -0.2, "b": -1.9}]}}]
    }
    parse_payload(json.dumps(payload), 1, state)
    assert state.logprobs == [{"a": -0.2, "b": -1.9}]


def test_request_body_asks_for_logprobs_per_endpoint() -> None:
    from agent.backends.openai import OpenAIArgs, OpenAIBackend
    from agent.core.record import GenerationRequest

    backend = OpenAIBackend(OpenAIArgs(base_url="http://127.0.0.1:1", model="m"))
    req = GenerationRequest("r", prompt="p", top_logprobs=5)
    assert backend._body(req, "chat")["top_logprobs"] == 5 and backend._body(req, "chat")["logprobs"] is True
    assert backend._body(req, "completions")["logprobs"] == 5
    assert "logprobs" not in backend._body(GenerationRequest("r", prompt="p"), "chat")
