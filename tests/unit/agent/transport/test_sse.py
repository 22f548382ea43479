from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from agent.transport.sse import SSEEvent, SSEParser

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b"event: error\r\ndata: first line\r\ndata:second line\r\n\r\n"
    b'data: {"text": "caf\xc3\xa9 \xe2\x82\xac"}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message", '{"a": 1}'),
    SSEEvent("error", "first line\nsecond line"),
    SSEEvent("message", '{"text": "café €"}'),
    SSEEvent("message", "[DONE]"),
]


def parse(pieces: list[bytes]) -> list[SSEEvent]:
    p = SSEParser()
    out: list[SSEEvent] = []
    for piece in pieces:
        out.extend(p.feed(piece))
    out.extend(p.close())
    return out


def test_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


def test_split_at_every_offset() -> None:
    for i in range(len(STREAM) + 1):
        assert parse([STREAM[:i], STREAM[i:]]) == EXPECTED, i


def test_byte_by_byte() -> None:
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split(cuts: list[int]) -> None:
    bounds = sorted({0, len(STREAM), *cuts})
    assert parse([STREAM[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


def test_comment_only_and_blank_lines_dispatch_nothing() -> None:
    assert parse([b": ping\n\n\n\n: ping\n"]) == []


def test_unterminated_last_event_is_flushed_on_close() -> None:
    assert parse([b'data: {"x": 2}']) == [SSEEvent("message", '{"x": 2}')]


def test_field_without_space_and_unknown_fields() -> None:
    assert parse([b"id: 7\nretry: 10\ndata:x\n\n"]) == [SSEEvent("message", "x")]


@given(st.binary(max_size=300))
def test_garbage_never_raises(blob: bytes) -> None:
    events = parse([blob])
    assert all(isinstance(e, SSEEvent) for e in events)


LF_STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n\n'
    b"event: error\ndata: first line\ndata:second line\n\n"
    b'data:{"text": "caf\xc3\xa9 \xe2\x82\xac"}\n\n'
    b"data: [DONE]\n\n"
)


def payloads(stream: bytes, cuts: list[int]) -> tuple[list[bytes], list[bytes]]:
    """(feed_payloads result, feed result as bytes) for the same pieces."""
    bounds = sorted({0, len(stream), *cuts})
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    fast, full = SSEParser(), SSEParser()
    got = [p for piece in pieces for p in fast.feed_payloads(piece)]
    got += [e.data.encode() for e in fast.close()]
    want = [e.data.encode() for piece in pieces for e in full.feed(piece)]
    want += [e.data.encode() for e in full.close()]
    return got, want


@given(st.lists(st.integers(min_value=0, max_value=len(LF_STREAM)), max_size=12), st.booleans())
def test_fast_payloads_equal_the_full_rules_for_any_split(cuts: list[int], crlf: bool) -> None:
    stream = STREAM if crlf else LF_STREAM
    got, want = payloads(stream, [c % (len(stream) + 1) for c in cuts])
    assert got == want
    assert len(got) == 4


def test_fast_payloads_at_every_offset() -> None:
    for i in range(len(LF_STREAM) + 1):
        got, want = payloads(LF_STREAM, [i])
        assert got == want, i
