"""The record model every layer speaks: requests out, stream events back, one RequestRecord per request.

Timing rules follow method §1 (docs/method.md): wall-clock times are measured from the *intended*
send time, native times come from the server (or the in-process loop), and derived figures are computed
here once so every consumer reads the same numbers.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.core.text import clean, clean_obj, is_clean

__all__ = [
    "DEFAULT_TEXT_CAP",
    "LOGPROB_POSITIONS",
    "MIN_DECODE_MS",
    "REASONS",
    "SCHEMA_VERSION",
    "ChainRecord",
    "Chunk",
    "GenerationRequest",
    "Measurement",
    "NativeTimings",
    "RecordIdentity",
    "RequestRecord",
    "StreamEnd",
    "StreamEvent",
    "Turn",
    "Usage",
    "check_invariants",
    "meets_slo",
]

SCHEMA_VERSION = 1
#: Shortest native decode a tokens-per-second figure is taken from (below it the clock's resolution and
#: the server's rounding are the figure); shorter decodes leave ``native_tok_s`` and ``overhead_pct`` out.
MIN_DECODE_MS = 1.0
#: Characters of output text a record keeps by default (scenario ``max_output_chars``).
DEFAULT_TEXT_CAP = 262_144
#: Output positions whose top-k logprobs a record keeps when they are asked for (drift's KL signal).
LOGPROB_POSITIONS = 10

#: Degraded-record reasons and what each means; ``http_<code>`` stands for every HTTP status.
REASONS: dict[str, str] = {
    "timeout_connect": "the TCP/HTTP connection was not established in time",
    "timeout_first_token": "no output token arrived before the first-token timeout",
    "timeout_total": "the stream did not finish before the total timeout",
    "http_<code>": "the server answered with a non-2xx HTTP status",
    "connection": "the server could not be reached (refused, unreachable, DNS)",
    "connection_reset": "the connection dropped after the request was sent",
    "invalid_response": "the body could not be parsed or lacked required fields",
    "invariant": "the measured times contradict each other (e.g. TTFT > E2E); see detail",
    "interrupted": "the run was stopped (SIGINT/SIGTERM) while the request was in flight",
    "client_error": "an unexpected error inside the client; see detail",
}

Stage = Literal["warmup", "steady", "cooldown"]


@dataclass(slots=True, frozen=True)
class Turn:
    """A later turn of a conversation: what the user says next, and what the dataset answered."""

    text: str
    #: the dataset's own answer to this turn (sent as the assistant's turn when answers come from the data)
    answer: str | None = None
    #: the answer length to ask for (None: the scenario's)
    output_tokens: int | None = None
    #: the user's pause before this turn, seconds (None: the workload's think time)
    think_s: float | None = None


#: sampling parameters as sent (temperature, top_p, top_k, seed, stop sequences ...); omitted: the server's
SamplingParams: TypeAlias = dict[str, float | list[str]]


@dataclass(slots=True)
class GenerationRequest:
    """One request as the runner hands it to a backend."""

    request_id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=dict)
    ignore_eos: bool = False
    cache_prompt: bool = False
    endpoint: Literal["chat", "completions"] = "chat"
    prompt_id: str | None = None
    #: the prompt length the workload asked for (trace replay), reported against the measured one
    prompt_tokens_target: int | None = None
    session_id: str | None = None
    #: False when the runner keeps no text of this response: a backend may then count chunks without
    #: decoding their text (``Chunk.text`` empty)
    want_text: bool = True
    #: top-k alternatives to record per position for the first LOGPROB_POSITIONS output tokens (0 = none)
    top_logprobs: int = 0
    #: shared-prefix workloads: the group whose prefix this prompt shares
    prefix_group: str | None = None
    #: tokens the chat template adds around the content, as measured at the server (None: not measured)
    template_tokens: int | None = None
    #: conversations: the turns after this first one, sent in order with the context growing
    turns: tuple[Turn, ...] = ()
    #: conversations: the first turn's dataset answer (kept for answers taken from the data)
    answer: str | None = None
    #: the model this request names, where a run spreads its traffic over several (None: the backend's)
    model: str | None = None
    #: False: ask for the whole answer in one response (no stream); TTFT is then the whole response
    stream: bool = True
    #: extra JSON body fields and HTTP headers the scenario asks for (OpenAI-compatible servers)
    extra_body: dict[str, object] | None = None
    headers: dict[str, str] | None = None


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts; ``source`` says who counted them.

    ``server``: the HTTP server's usage or native counts; ``engine``: the in-process engine's own exact
    count; ``tokenizer``: a client-side fallback count, flagged as such.
    """

    prompt_tokens: int | None
    output_tokens: int | None
    source: Literal["server", "engine", "tokenizer"] = "server"
    cached_prompt_tokens: int | None = None


@dataclass(slots=True, frozen=True)
class NativeTimings:
    """Server-reported (or in-process) phase durations, already converted to milliseconds."""

    source: str
    prefill_ms: float | None = None
    decode_ms: float | None = None
    load_ms: float | None = None
    prompt_n: int | None = None
    predicted_n: int | None = None
    queue_ms: float | None = None
    server_ttft_ms: float | None = None
    total_ms: float | None = None
    cold_start: bool = False
    compiled: str | None = None


@dataclass(slots=True)
class Chunk:
    """Text-bearing stream chunks read together, stamped when their bytes were read from the socket.

    ``count`` chunks arrived in one socket read (same timestamp); ``text`` is their text joined.
    """

    t_ns: int
    text: str
    reasoning: bool = False
    count: int = 1


@dataclass(slots=True)
class StreamEnd:
    """The end of a stream: last byte time and whatever the server reported about the request."""

    t_ns: int
    usage: Usage | None = None
    native: NativeTimings | None = None
    finish_reason: str | None = None
    #: {token: logprob} of the top-k alternatives at each of the first output positions, when asked for
    logprobs: list[dict[str, float]] | None = None


StreamEvent = Chunk | StreamEnd


@dataclass(slots=True, frozen=True)
class RecordIdentity:
    """Who a request was: the labels a record carries besides its measurements."""

    run_id: str
    scenario: str
    request_id: str
    seq: int
    backend: str
    model: str
    endpoint: str
    stage: Stage = "steady"
    prompt_id: str | None = None
    requested_output_tokens: int | None = None
    step: int | None = None
    chain_id: str | None = None
    load_stage: str | None = None
    target_rate: float | None = None
    batch_id: str | None = None
    batch_size: int | None = None
    cold_cause: Literal["first_request", "idle_gap"] | None = None
    requested_prompt_tokens: int | None = None
    prefix_group: str | None = None
    template_tokens: int | None = None
    conversation_id: str | None = None
    turn: int | None = None
    streamed: bool | None = None
    clients: int | None = None


class RequestRecord(BaseModel):
    """One line of ``records.jsonl``: both clocks, token counts, derived figures and the outcome.

    Every field's text below is its documentation (``docs/records.md`` is generated from it).
    """

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    schema_version: int = SCHEMA_VERSION
    """Version of this record layout."""
    run_id: str
    """The run this request belongs to."""
    scenario: str
    """Scenario name (a tenant's name when several ran at once)."""
    stage: Stage = "steady"
    """``warmup``, ``steady`` or ``cooldown``; only steady records enter the figures."""
    is_warmup: bool = False
    """True for warmup requests, summarised apart (method §2)."""
    request_id: str
    """Unique within the run."""
    seq: int
    """Order in which the runner issued the request, from 0."""
    prompt_id: str | None = None
    """The scenario prompt it was made from (quality scoring and drift pair outputs by it)."""
    step: int | None = None
    """Agent chains: the step within its chain, from 0."""
    chain_id: str | None = None
    """Agent chains: the chain it belongs to (a trace's session id in a replay)."""
    conversation_id: str | None = None
    """Conversations: the conversation (one user's session) this turn belongs to."""
    turn: int | None = None
    """Conversations: the turn within its conversation, from 0; its prompt holds every turn before it."""
    streamed: bool | None = None
    """False for a non-streaming request: its answer came whole, so TTFT is the whole response."""
    clients: int | None = None
    """Closed-loop ramps: how many clients were running when the request was due."""
    prefix_group: str | None = None
    """Shared-prefix workloads: the group whose prefix the prompt shares."""
    load_stage: str | None = None
    """Sweeps: the load stage, e.g. ``concurrency=8``."""
    target_rate: float | None = None
    """Open loop: the requested arrival rate, requests per second."""
    batch_id: str | None = None
    """Batches: the batch it was sent in."""
    batch_size: int | None = None
    """Batches: how many prompts that batch held."""
    backend: str
    """Backend name (the target's name for the daemon)."""
    model: str
    """Model as the backend names it."""
    endpoint: str
    """API used: ``chat``, ``completions``, ``generate``, ``prefill_batch``."""
    status: Literal["ok", "degraded"]
    """``degraded`` records are kept but left out of every aggregate (method §2)."""
    reason: str | None = None
    """Why a record is degraded: ``timeout_first_token``, ``http_503``, ``connection``, ``invariant``…"""
    detail: str | None = None
    """The failure in words, secrets masked."""
    intended_offset_ms: float
    """When the request was due, ms from the run's start."""
    sent_offset_ms: float
    """When it was actually sent, ms from the run's start."""
    schedule_lag_ms: float
    """How late it was sent against its due time (open loop: the client's own delay)."""
    sent_unix_s: float
    """Send time as Unix seconds."""
    ttft_ms: float | None = None
    """Wall clock: due time → first chunk carrying output text."""
    ttfo_ms: float | None = None
    """Wall clock: due time → first chunk of the answer proper (after any reasoning)."""
    itl_ms: list[float] = []
    """Wall clock: every gap between consecutive text chunks."""
    tpot_ms: float | None = None
    """Wall clock: (E2E − TTFT) ÷ (output tokens − 1)."""
    e2e_ms: float | None = None
    """Wall clock: due time → last byte of the answer."""
    chunks: int = 0
    """Text-bearing chunks received."""
    native_source: str | None = None
    """Which server reported the native times (``ollama``, ``llama.cpp``, ``transformers``…)."""
    prefill_ms: float | None = None
    """Native clock: prompt processing."""
    decode_ms: float | None = None
    """Native clock: generation after the first token."""
    load_ms: float | None = None
    """Native clock: model load on this request (a cold start when large)."""
    native_ttft_ms: float | None = None
    """Native clock: load + prefill."""
    native_total_ms: float | None = None
    """Native clock: the server's whole time for the request."""
    queue_ms: float | None = None
    """In-process: how long the request waited for a free engine worker."""
    cold_start: bool = False
    """The model was not warm: a load, the first request, or the first after an idle gap."""
    cold_cause: Literal["load", "first_request", "idle_gap"] | None = None
    """Why the request counts as cold."""
    compile_backend: str | None = None
    """In-process: the torch.compile backend actually in use."""
    prompt_tokens: int | None = None
    """Prompt tokens as the server or engine counted them."""
    requested_prompt_tokens: int | None = None
    """Prompt length the scenario, workload or trace asked for."""
    template_tokens: int | None = None
    """Chat: tokens the server's chat template adds around the content, measured apart."""
    cached_prompt_tokens: int | None = None
    """Prompt tokens the server served from its cache."""
    output_tokens: int | None = None
    """Output tokens received."""
    token_source: Literal["server", "engine", "tokenizer", "chunks"] | None = None
    """Where ``output_tokens`` came from; ``chunks`` is a count of chunks, the weakest source."""
    requested_output_tokens: int | None = None
    """``max_tokens`` asked for."""
    finish_reason: str | None = None
    """Why generation ended, as the server said (``length``, ``stop``…)."""
    early_stop: bool = False
    """Fewer tokens than asked came back (method §1)."""
    decode_ms_fixed_len: float | None = None
    """Early stops: decode time scaled to the asked length, beside the measured one."""
    native_tok_s: float | None = None
    """Output tokens ÷ native decode seconds."""
    wall_tok_s: float | None = None
    """Output tokens ÷ E2E seconds."""
    overhead_pct: float | None = None
    """(native tok/s ÷ wall tok/s − 1) × 100: time outside the server's decode."""
    decode_fraction: float | None = None
    """decode ÷ (prefill + decode)."""
    energy_j: float | None = None
    """Energy over the idle baseline, only where the power samples could see the request (method §5)."""
    energy_quality: Literal["good", "no_data", "counter"] | None = None
    """``good``: two or more samples in the window; ``counter``: the GPU's energy counter; ``no_data``."""
    energy_samples: int | None = None
    """Power samples inside the request's window."""
    power_delta_w: float | None = None
    """Mean power over the idle baseline in the window."""
    prefill_energy_j: float | None = None
    """Energy of the prefill window, gated as ``energy_j``."""
    prefill_energy_quality: Literal["good", "no_data", "counter"] | None = None
    """Quality of ``prefill_energy_j``."""
    decode_energy_j: float | None = None
    """Energy of the decode window, gated as ``energy_j``."""
    decode_energy_quality: Literal["good", "no_data", "counter"] | None = None
    """Quality of ``decode_energy_j``."""
    output_text: str | None = None
    """The answer, where the scenario keeps outputs (``keep_output_every``) or quality needs it."""
    output_truncated: bool | None = None
    """True when ``output_text`` was cut at the scenario's ``max_output_chars`` (a runaway answer)."""
    top_logprobs: list[dict[str, float]] | None = None
    """Top-k {token: logprob} for the first output positions (scenario ``logprobs``), for drift's KL."""
    text_sanitized: bool | None = None
    """True when text the server sent could not be kept as it was (lone surrogates, NUL or other control
    characters, bytes that were not UTF-8): each such character is U+FFFD here."""


class ChainRecord(BaseModel):
    """One line of ``chains.jsonl``: an agent chain as a whole, beside its per-step request records."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    schema_version: int = SCHEMA_VERSION
    """Version of this record layout."""
    run_id: str
    """The run this chain belongs to."""
    scenario: str
    """Scenario name."""
    chain_id: str
    """Unique within the run; its steps' records carry it."""
    stage: Stage = "steady"
    """``warmup``, ``steady`` or ``cooldown``."""
    status: Literal["ok", "degraded"]
    """``degraded`` when a step failed or the run stopped mid-chain."""
    reason: str | None = None
    """The failing step's reason, or ``interrupted``."""
    failed_step: int | None = None
    """The step that failed (steps done before it)."""
    steps_planned: int
    """Steps the scenario asks for."""
    steps_done: int
    """Steps that completed ok."""
    started_offset_ms: float
    """When the chain began, ms from the run's start."""
    chain_e2e_ms: float
    """The whole chain, think time included."""
    think_ms: float
    """Time spent thinking between steps."""
    prompt_tokens: int | None = None
    """Prompt tokens over every step."""
    output_tokens: int | None = None
    """Output tokens over every step."""


def _ms(ns: int) -> float:
    return ns / 1e6


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


@dataclass(slots=True)
class Measurement:
    """Accumulates one request's stream events; ``to_record`` turns it into a RequestRecord.

    ``intended_ns`` and ``sent_ns`` are ``time.perf_counter_ns()`` values; ``run_start_ns`` and
    ``run_start_unix`` anchor them to the run. Chunk stamps and gaps are kept in flat arrays (8 bytes
    each rather than a boxed number's 32 and a list slot's 8): a run holds one per request in flight.
    """

    run_start_ns: int
    run_start_unix: float
    intended_ns: int
    sent_ns: int
    keep_text: bool = False
    text_ns: array[int] = field(default_factory=lambda: array("q"))
    itl_ms: array[float] = field(default_factory=lambda: array("d"))
    first_answer_ns: int | None = None
    end: StreamEnd | None = None
    parts: list[str] = field(default_factory=list)
    #: most characters of output text kept (``keep_text``); the rest is dropped and the record says so
    text_cap: int = DEFAULT_TEXT_CAP
    text_kept: int = 0
    truncated: bool = False

    def observe(self, event: StreamEvent) -> None:
        """Fold one stream event into the measurement.

        The gaps are taken here, one per event: the chunks one read brought share its stamp, so all but
        the first of them follow a gap of zero.
        """
        if isinstance(event, Chunk):
            ns, k = self.text_ns, event.count
            if ns and k:
                self.itl_ms.append((event.t_ns - ns[-1]) / 1e6)
            if k == 1:
                ns.append(event.t_ns)
            elif k > 1:
                ns.extend(array("q", (event.t_ns,)) * k)  # array to array: one copy, no per-item step
                self.itl_ms.frombytes(bytes(8 * (k - 1)))  # k - 1 gaps of 0.0 (all-zero doubles)
            if not event.reasoning and self.first_answer_ns is None:
                self.first_answer_ns = event.t_ns
            if self.keep_text and not event.reasoning:
                self._keep(event.text)
        else:
            self.end = event

    def _keep(self, text: str) -> None:
        room = self.text_cap - self.text_kept
        if len(text) > room:
            self.truncated = True
            text = text[: max(room, 0)]
        if text:
            self.parts.append(text)
            self.text_kept += len(text)

    def to_record(
        self,
        ident: RecordIdentity,
        *,
        failure: tuple[str, str] | None = None,
        now_ns: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> RequestRecord:
        """Build the record.

        ``failure`` is ``(reason, detail)`` for a degraded request; ``extra`` adds fields measured
        elsewhere (energy).
        """
        fields = _identity_fields(ident)
        fields.update(self._clock_fields(now_ns))
        fields.update(self._output_fields())
        native = self.end.native if self.end else None
        fields.update(_native_fields(native))
        if fields.get("cold_start"):
            fields["cold_cause"] = "load"
        elif ident.cold_cause is not None:
            fields.update(cold_start=True, cold_cause=ident.cold_cause)
        fields.update(_derived(fields))
        if extra:
            fields.update(extra)
        _sanitize(fields, failure[1] if failure is not None else None)
        if failure is not None:
            fields.update(status="degraded", reason=failure[0], detail=fields.pop("detail", None))
            return _build(fields)
        record = _build({"status": "ok", **fields})
        if record.status == "degraded":
            return record
        broken = check_invariants(record)
        if broken:
            record = record.model_copy(
                update={"status": "degraded", "reason": "invariant", "detail": "; ".join(broken)}
            )
        return record

    def _clock_fields(self, now_ns: int | None) -> dict[str, Any]:
        """The wall clock: offsets from the run start, schedule lag, TTFT, first output, ITL, E2E."""
        t0 = self.intended_ns
        end_ns = self.end.t_ns if self.end is not None else now_ns
        return {
            "intended_offset_ms": _ms(self.intended_ns - self.run_start_ns),
            "sent_offset_ms": _ms(self.sent_ns - self.run_start_ns),
            "schedule_lag_ms": _ms(self.sent_ns - self.intended_ns),
            "sent_unix_s": self.run_start_unix + (self.sent_ns - self.run_start_ns) / 1e9,
            "ttft_ms": _ms(self.text_ns[0] - t0) if self.text_ns else None,
            "ttfo_ms": _ms(self.first_answer_ns - t0) if self.first_answer_ns is not None else None,
            "itl_ms": self.itl_ms.tolist(),
            "e2e_ms": _ms(end_ns - t0) if end_ns is not None else None,
        }

    def _output_fields(self) -> dict[str, Any]:
        """What came back: chunks, token counts and their source, finish reason, kept text, logprobs."""
        usage = self.end.usage if self.end else None
        output_tokens, token_source = _output_tokens(usage, len(self.text_ns))
        return {
            "chunks": len(self.text_ns),
            "output_tokens": output_tokens,
            "token_source": token_source,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "cached_prompt_tokens": usage.cached_prompt_tokens if usage else None,
            "finish_reason": self.end.finish_reason if self.end else None,
            "output_text": "".join(self.parts) if self.keep_text else None,
            "output_truncated": True if self.truncated else None,
            "top_logprobs": self.end.logprobs if self.end else None,
        }


#: Record fields whose text a server chose (the failure detail can quote it too).
_SERVER_TEXT = ("output_text", "finish_reason", "model")


def _sanitize(fields: dict[str, Any], detail: str | None) -> None:
    """Clean the text a server chose in ``fields`` (and the failure ``detail``); flag the record if any was.

    Clean text, the usual case, costs one scan of each string.
    """
    flagged = False
    for name in _SERVER_TEXT:
        value = fields.get(name)
        if isinstance(value, str) and not is_clean(value):
            fields[name], flagged = clean(value), True
    if detail:
        fields["detail"] = clean(detail)
    logprobs = fields.get("top_logprobs")
    if logprobs and not all(is_clean(k) for m in logprobs if isinstance(m, dict) for k in m):
        fields["top_logprobs"], flagged = clean_obj(logprobs), True
    if flagged:
        fields["text_sanitized"] = True


def _build(fields: dict[str, Any]) -> RequestRecord:
    """The record of ``fields``; a value of the wrong type (a server's) is dropped and the record degraded.

    Every field a server fills is optional, so dropping the ones that fail validation always leaves a
    record to write: what the server sent cannot cost one.
    """
    try:
        return RequestRecord(**fields)
    except ValidationError as e:
        bad = sorted({str(err["loc"][0]) for err in e.errors() if err["loc"]})
    for name in bad:
        fields.pop(name, None)
    fields["status"] = "degraded"
    if not fields.get("reason"):
        fields["reason"] = "invalid_response"
        fields["detail"] = f"the server sent values of the wrong type for {', '.join(bad)}"
    return RequestRecord(**fields)


def _identity_fields(ident: RecordIdentity) -> dict[str, Any]:
    """Which request this was: run, scenario, stage, ids, load, backend and what was asked for."""
    return {
        "run_id": ident.run_id,
        "scenario": ident.scenario,
        "stage": ident.stage,
        "is_warmup": ident.stage == "warmup",
        "request_id": ident.request_id,
        "seq": ident.seq,
        "prompt_id": ident.prompt_id,
        "step": ident.step,
        "chain_id": ident.chain_id,
        "load_stage": ident.load_stage,
        "target_rate": ident.target_rate,
        "batch_id": ident.batch_id,
        "batch_size": ident.batch_size,
        "requested_prompt_tokens": ident.requested_prompt_tokens,
        "prefix_group": ident.prefix_group,
        "template_tokens": ident.template_tokens,
        "conversation_id": ident.conversation_id,
        "turn": ident.turn,
        "streamed": ident.streamed,
        "clients": ident.clients,
        "backend": ident.backend,
        "model": ident.model,
        "endpoint": ident.endpoint,
        "requested_output_tokens": ident.requested_output_tokens,
    }


def _output_tokens(usage: Usage | None, chunks: int) -> tuple[int | None, str | None]:
    if usage is not None and usage.output_tokens is not None:
        return usage.output_tokens, usage.source
    if chunks:
        return chunks, "chunks"
    return None, None


def _native_fields(native: NativeTimings | None) -> dict[str, Any]:
    if native is None:
        return {}
    native_ttft = native.server_ttft_ms
    if native_ttft is None and native.prefill_ms is not None:
        native_ttft = native.prefill_ms + (native.load_ms or 0.0)
    return {
        "native_source": native.source,
        "prefill_ms": native.prefill_ms,
        "decode_ms": native.decode_ms,
        "load_ms": native.load_ms,
        "native_ttft_ms": native_ttft,
        "native_total_ms": native.total_ms,
        "queue_ms": native.queue_ms,
        "cold_start": native.cold_start,
        "compile_backend": native.compiled,
    }


def _derived(f: dict[str, Any]) -> dict[str, Any]:
    """The derived figures of method §1: tok/s on both clocks, overhead, decode fraction, TPOT, early stop."""
    out: dict[str, Any] = {}
    tokens: int | None = f["output_tokens"]
    e2e: float | None = f["e2e_ms"]
    ttft: float | None = f["ttft_ms"]
    decode: float | None = f.get("decode_ms")
    prefill: float | None = f.get("prefill_ms")
    # rates of output exist only where there is a decode: one token (a prefill-only request, batch
    # prefill) has none, and a rate over a near-zero decode time would be a division, not a figure
    decoding = bool(tokens and tokens > 1)
    if decoding and e2e is not None and ttft is not None:
        out["tpot_ms"] = (e2e - ttft) / (tokens - 1)  # type: ignore[operator]
    timed = decode is not None and decode >= MIN_DECODE_MS
    native_tok_s = _ratio(tokens, decode / 1000) if decoding and timed and decode is not None else None
    wall_tok_s = _ratio(tokens, e2e / 1000 if e2e is not None else None) if decoding else None
    out["native_tok_s"] = native_tok_s
    out["wall_tok_s"] = wall_tok_s
    if native_tok_s is not None and wall_tok_s is not None:
        out["overhead_pct"] = (native_tok_s / wall_tok_s - 1.0) * 100.0
    if prefill is not None and decode is not None:
        out["decode_fraction"] = _ratio(decode, prefill + decode)
    requested: int | None = f["requested_output_tokens"]
    if tokens is not None and requested and tokens < requested:
        out["early_stop"] = True
        if decode is not None and tokens > 0:
            out["decode_ms_fixed_len"] = decode * requested / tokens
    return out


def check_invariants(record: RequestRecord) -> list[str]:
    """Return the timing invariants an ok record breaks (empty when it is consistent)."""
    broken: list[str] = []
    e2e = record.e2e_ms
    if e2e is None:
        broken.append("no end-of-stream time")
        return broken
    if record.ttft_ms is not None and record.ttft_ms > e2e:
        broken.append(f"ttft_ms {record.ttft_ms:.3f} > e2e_ms {e2e:.3f}")
    if record.prefill_ms is not None and record.decode_ms is not None:
        native = record.prefill_ms + record.decode_ms
        if native > e2e:
            broken.append(f"prefill_ms + decode_ms {native:.3f} > e2e_ms {e2e:.3f}")
    if record.itl_ms and min(record.itl_ms) < 0:
        broken.append("negative inter-token gap")
    for name in ("prefill_ms", "decode_ms", "load_ms"):
        value = getattr(record, name)
        if value is not None and value < 0:
            broken.append(f"{name} is negative")
    for name in ("tpot_ms", "native_tok_s", "wall_tok_s", "overhead_pct", "decode_fraction"):
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            broken.append(f"{name} is not finite")
    if record.tpot_ms is not None and record.tpot_ms < 0:
        broken.append("tpot_ms is negative")
    if record.decode_fraction is not None and not 0 <= record.decode_fraction <= 1:
        broken.append(f"decode_fraction {record.decode_fraction:.3f} outside 0..1")
    if record.overhead_pct is not None and record.overhead_pct < -100:
        broken.append(f"overhead_pct {record.overhead_pct:.1f} below -100")
    return broken


def meets_slo(r: RequestRecord, slo: Mapping[str, float | None]) -> bool:
    """An ok record whose TTFT, TPOT and E2E are within every objective set in ``slo``.

    A missing figure fails. This is what goodput counts, in the summary and the exported metrics alike.
    """
    if r.status != "ok":
        return False
    for key, value in (("ttft_ms", r.ttft_ms), ("tpot_ms", r.tpot_ms), ("e2e_ms", r.e2e_ms)):
        limit = slo.get(key)
        if limit is not None and (value is None or value > limit):
            return False
    return True
