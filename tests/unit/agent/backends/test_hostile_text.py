"""Whatever text a server sends, every record is written: lone surrogates, NULs, control characters and
bytes that are not UTF-8 are kept as U+FFFD and the record says so; wrong types degrade, never crash."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.backends import create
from agent.core.scenario import Scenario
from agent.core.text import clean, is_clean
from agent.run.runner import RunContext, Runner
from analysis.records import load_records
from exporters.jsonl import JsonlWriter
from tests.unit.agent.backends.test_stream_properties import RawServer

REQUESTS = 3

#: Every code point, surrogates and controls much more often than chance would pick them.
_CHAR = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.integers(0, 0x1F).map(chr),
    st.integers(0x7F, 0x9F).map(chr),
)
_TEXT = st.text(_CHAR, min_size=1, max_size=40)


def _frame(content: str, finish: str | None = None) -> bytes:
    """One SSE chunk; ``json.dumps`` spells a lone surrogate as the valid JSON ``"\\ud800"``."""
    choice: dict[str, Any] = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def _stream(text: str, raw: bytes) -> list[bytes]:
    """A valid stream whose text holds ``text`` and whose last chunk's text is the raw bytes ``raw``."""
    raw_frame = b'data: {"choices":[{"index":0,"delta":{"content":"' + raw + b'"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3}}\n\n'
    return [_frame(text), raw_frame, _frame("end", finish=text[:8] or "stop"), usage, b"data: [DONE]\n\n"]


async def _run(out: Path, streams: list[list[bytes]]) -> int:
    async with RawServer(b"text/event-stream") as srv:
        srv.script = list(streams)
        backend = create("openai", {"base_url": srv.url, "model": "m"})
        sc = Scenario.model_validate(
            {
                "name": "hostile",
                "prompts": ["x"],
                "requests": len(streams),
                "concurrency": 1,
                "warmup": 0,
                "keep_output_every": 1,
                "timeout": {"first_token_s": 5, "total_s": 5},
            }
        )
        await backend.start()
        try:
            with JsonlWriter(out) as writer:
                await Runner(sc, backend, writer, RunContext("h")).run()
                return writer.count
        finally:
            await backend.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(_TEXT, min_size=REQUESTS, max_size=REQUESTS),
    raws=st.lists(
        st.binary(max_size=16).map(lambda b: b.replace(b'"', b"").replace(b"\\", b"")),
        min_size=REQUESTS,
        max_size=REQUESTS,
    ),
)
def test_any_text_a_server_sends_is_written_with_every_record(
    tmp_path_factory: Any, texts: list[str], raws: list[bytes]
) -> None:
    out = tmp_path_factory.mktemp("hostile") / "records.jsonl"
    written = asyncio.run(_run(out, [_stream(t, r) for t, r in zip(texts, raws, strict=True)]))
    assert written == REQUESTS
    loaded = load_records(out)
    assert loaded.warnings == [] and len(loaded.records) == REQUESTS
    out.read_bytes().decode("utf-8")  # the whole file is UTF-8
    for record, given_text in zip(loaded.records, texts, strict=True):
        text = json.loads(json.dumps(given_text))  # what the server said: JSON pairs up surrogate pairs
        if record.status == "ok":
            assert record.output_text is not None and record.output_text.startswith(clean(text))
            assert is_clean(record.output_text.replace("\ufffd", "")), "nothing unsafe kept"
            if not is_clean(text):
                assert record.text_sanitized is True
        else:  # raw control bytes make the JSON itself invalid: a degraded record, still written
            assert record.reason == "invalid_response", record.detail


def test_a_lone_surrogate_everywhere_costs_no_record(tmp_path: Path) -> None:
    """The reported case: ``"\\ud800"`` in the text and the finish reason; all six records on disk."""
    streams = [_stream("a\ud800b", b"ok") for _ in range(6)]
    out = tmp_path / "records.jsonl"
    assert asyncio.run(_run(out, streams)) == 6
    records = load_records(out).records
    assert [r.status for r in records] == ["ok"] * 6
    assert all(r.output_text == "a\ufffdbokend" and r.text_sanitized for r in records)
    assert all(r.finish_reason == "a\ufffdb" for r in records)


def test_values_of_the_wrong_type_degrade_the_record(tmp_path: Path) -> None:
    """A finish reason that is an object and a token count that is text: degraded, with what was wrong."""
    bad = (
        b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":{"a":1}}],'
        b'"usage":{"prompt_tokens":"many","completion_tokens":[1]}}\n\n'
    )
    out = tmp_path / "records.jsonl"
    assert asyncio.run(_run(out, [[bad, b"data: [DONE]\n\n"]])) == 1
    (record,) = load_records(out).records
    assert record.status == "degraded" and record.reason == "invalid_response"
    assert record.detail is not None and "finish_reason" in record.detail
    assert record.finish_reason is None and record.prompt_tokens is None and record.token_source == "chunks"


def test_a_record_that_cannot_be_encoded_is_still_written(tmp_path: Path) -> None:
    """The writer's own net: a record built around the checks still reaches the file, cleaned."""
    record = _constructed()
    out = tmp_path / "records.jsonl"
    with JsonlWriter(out) as writer:
        writer.write(record)
    (back,) = load_records(out).records
    assert back.model == "m\ufffd" and back.text_sanitized is True


def _constructed() -> Any:
    from agent.core.record import RequestRecord

    fields = {name: f.default for name, f in RequestRecord.model_fields.items() if not f.is_required()}
    fields.update(
        run_id="r",
        scenario="s",
        request_id="q",
        seq=0,
        backend="b",
        model="m\udc80",
        endpoint="chat",
        status="ok",
        intended_offset_ms=0.0,
        sent_offset_ms=0.0,
        schedule_lag_ms=0.0,
        sent_unix_s=0.0,
    )
    return RequestRecord.model_construct(**fields)
