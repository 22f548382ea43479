"""The in-process transformers backend on a tiny GPT-2 built from a config (no weights downloaded)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from agent.backends import create
from agent.backends.capabilities import Warming
from agent.core.errors import BackendError
from agent.core.record import Chunk, GenerationRequest, RequestRecord, StreamEnd
from agent.core.scenario import Scenario
from agent.run.runner import RunContext, Runner
from tests.tiny_lm import build_tiny_lm

PROMPT = "the model streams tokens"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


async def started(path: Path, **kw: Any) -> Any:
    backend = create("transformers", {"model": str(path), "threads": 1, **kw})
    await backend.start()
    return backend


async def collect(backend: Any, req: GenerationRequest) -> tuple[list[Chunk], StreamEnd]:
    events = [e async for e in backend.stream(req)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return [e for e in events if isinstance(e, Chunk)], end


def reference(path: Path, prompt: str, n: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id
        )
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


async def test_greedy_output_equals_generate_and_phases_are_split(tiny: Path) -> None:
    backend = await started(tiny)
    try:
        req = GenerationRequest(
            request_id="r", prompt=PROMPT, max_tokens=24, ignore_eos=True, endpoint="completions"
        )
        chunks, end = await collect(backend, req)
    finally:
        await backend.close()
    assert "".join(c.text for c in chunks) == reference(tiny, PROMPT, 24)
    assert len(chunks) == 24 and end.finish_reason == "length"
    native = end.native
    assert native is not None and native.source == "transformers"
    assert native.prefill_ms is not None and native.prefill_ms > 0
    assert native.decode_ms is not None and native.decode_ms > 0
    assert native.predicted_n == 24 and native.prompt_n is not None and native.prompt_n > 0
    assert end.usage is not None and end.usage.source == "engine" and end.usage.output_tokens == 24
    assert all(a.t_ns <= b.t_ns for a, b in itertools.pairwise(chunks))
    # decode spans exactly first → last token
    assert native.decode_ms == pytest.approx((chunks[-1].t_ns - chunks[0].t_ns) / 1e6)


async def test_left_padding_to_a_shape_bucket_keeps_the_output(tiny: Path) -> None:
    backend = await started(tiny, pad_to_multiple=16)
    try:
        req = GenerationRequest(
            request_id="r", prompt=PROMPT, max_tokens=12, ignore_eos=True, endpoint="completions"
        )
        chunks, _ = await collect(backend, req)
    finally:
        await backend.close()
    assert "".join(c.text for c in chunks) == reference(tiny, PROMPT, 12)


async def test_stopping_at_eos_is_an_early_stop(tiny: Path) -> None:
    backend = await started(tiny)
    try:
        req = GenerationRequest(
            request_id="r", prompt=PROMPT, max_tokens=8, ignore_eos=True, endpoint="completions"
        )
        chunks, _ = await collect(backend, req)
        first_token = backend._engine.tok(chunks[0].text).input_ids[0]
        backend._engine.tok.eos_token_id = first_token  # the model's first greedy choice now ends the answer
        req2 = GenerationRequest(request_id="s", prompt=PROMPT, max_tokens=8, endpoint="completions")
        chunks2, end2 = await collect(backend, req2)
    finally:
        await backend.close()
    assert len(chunks2) == 1 and end2.finish_reason == "stop" and end2.usage is not None
    assert end2.usage.output_tokens == 1


async def test_runner_records_carry_the_phase_split(tiny: Path) -> None:
    class Sink:
        def __init__(self) -> None:
            self.records: list[RequestRecord] = []

        def write(self, r: RequestRecord) -> None:
            self.records.append(r)

    backend = await started(tiny)
    sc = Scenario.model_validate(
        {
            "name": "t",
            "prompts": [PROMPT, "decode writes one token"],
            "requests": 3,
            "warmup": 1,
            "concurrency": 2,
            "output_tokens": 10,
            "ignore_eos": True,
            "endpoint": "chat",
        }
    )
    sink = Sink()
    try:
        await Runner(sc, backend, sink, RunContext("t")).run()
        facts = backend.describe()
    finally:
        await backend.close()
    assert len(sink.records) == 4
    for r in sink.records:
        assert r.status == "ok", r.detail
        assert r.output_tokens == 10 == r.chunks and r.token_source == "engine"
        assert r.decode_fraction is not None and 0 < r.decode_fraction < 1
        assert r.ttft_ms is not None and r.prefill_ms is not None and r.ttft_ms >= r.prefill_ms
    cold = [r for r in sink.records if r.cold_start]
    assert len(cold) == 1 and cold[0].is_warmup and cold[0].load_ms == pytest.approx(facts["load_ms"])
    assert facts["model_class"] == "GPT2LMHeadModel" and facts["compile"] == {"mode": None}


async def test_batch_prefill_pads_left_and_times_one_forward(tiny: Path) -> None:
    backend = await started(tiny)
    try:
        result = await backend.prefill_batch([PROMPT, "a", "latency is a distribution so we report"])
    finally:
        await backend.close()
    assert result.prompts == 3 and result.prefill_ms > 0
    assert result.prompt_tokens < 3 * result.padded_len


async def test_compile_records_requested_and_actual_backend_with_counters(tiny: Path) -> None:
    backend = await started(tiny, compile="prefill", compile_backend="aot_eager")
    try:
        req = GenerationRequest(
            request_id="r", prompt=PROMPT, max_tokens=4, ignore_eos=True, endpoint="completions"
        )
        _, end = await collect(backend, req)
        _, end = await collect(backend, req)
        evidence = backend.describe()["compile"]
    finally:
        await backend.close()
    assert evidence["mode"] == "prefill"
    assert evidence["backend_requested"] == "aot_eager" == evidence["backend_actual"]
    assert evidence["unique_graphs"] >= 1 and evidence["error"] is None
    assert {"recompiles", "guard_failures", "graph_breaks"} <= set(evidence)
    assert end.native is not None and end.native.compiled == "aot_eager"


def _failing_backend(gm: Any, example_inputs: Any) -> Any:
    raise RuntimeError("this compiler always fails")


async def test_an_unknown_compile_backend_is_a_clear_error(tiny: Path) -> None:
    backend = create("transformers", {"model": str(tiny), "compile": "all", "compile_backend": "no_such"})
    with pytest.raises(BackendError, match=r"unknown torch.compile backend 'no_such'; one of: .*inductor"):
        await backend.start()
    await backend.close()


async def test_a_failing_compile_backend_is_recorded_and_eager_runs(tiny: Path) -> None:
    from torch._dynamo import list_backends, register_backend

    if "infermeter_failing" not in list_backends(exclude_tags=()):
        register_backend(name="infermeter_failing")(_failing_backend)
    backend = await started(tiny, compile="all", compile_backend="infermeter_failing")
    try:
        req = GenerationRequest(
            request_id="r", prompt=PROMPT, max_tokens=3, ignore_eos=True, endpoint="completions"
        )
        chunks, end = await collect(backend, req)
        evidence = backend.describe()["compile"]
    finally:
        await backend.close()
    assert len(chunks) == 3
    assert evidence["backend_requested"] == "infermeter_failing" and evidence["backend_actual"] == "eager"
    assert evidence["error"] and end.native is not None and end.native.compiled == "eager"


async def test_missing_weights_offline_is_a_clear_error(tmp_path: Path) -> None:
    backend = create("transformers", {"model": "someone/not-downloaded-model"})
    with pytest.raises(BackendError, match="offline"):
        await backend.start()
    await backend.close()
    backend = create("transformers", {"model": str(tmp_path / "missing.gguf")})
    with pytest.raises(BackendError, match="does not exist"):
        await backend.start()
    await backend.close()


def _req(rid: str, prompt: str, n: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=rid, prompt=prompt, max_tokens=n, ignore_eos=True, endpoint="completions"
    )


async def test_warm_compiles_every_shape_before_the_clock(tiny: Path) -> None:
    """After the warm pass, the measured requests of every shape it saw cause no recompile."""
    import torch._dynamo

    torch._dynamo.reset()
    backend = await started(tiny, compile="all", compile_backend="aot_eager")
    requests = [_req("a", PROMPT, 6), _req("b", PROMPT + " and a longer prompt than the first", 6)]
    try:
        warm = await backend.warm(requests, [])
        for req in [*requests, *requests]:
            chunks, end = await collect(backend, req)
            assert len(chunks) == 6 and end.native is not None and end.native.compiled == "aot_eager"
        evidence = backend.describe()["compile"]
    finally:
        await backend.close()
    assert warm is not None and isinstance(backend, Warming)
    assert warm.prompt_shapes == 2 and warm.batch_shapes == 0 and warm.ms > 0
    # the second prompt length and the growing KV cache each made dynamo compile again
    assert warm.compile_s > 0 and warm.frames_compiled >= 2 and warm.graphs >= 2
    assert evidence["warm"] == warm.to_dict() and evidence["compiles_measured"] == 0


async def test_warm_is_a_no_op_without_compile(tiny: Path) -> None:
    backend = await started(tiny)
    try:
        assert await backend.warm([_req("a", PROMPT, 4)], [[PROMPT, PROMPT]]) is None
        assert "compiles_measured" not in backend.describe()["compile"]
    finally:
        await backend.close()


async def test_abandoned_work_stops_within_one_step(tiny: Path) -> None:
    """A caller that gives up (a timeout) stops the worker: no more tokens, and none at all if queued."""
    import threading

    backend = await started(tiny)
    engine = backend._engine
    try:
        events: list[Any] = []
        cancel = threading.Event()

        def put(event: Any) -> None:
            events.append(event)
            cancel.set()  # the caller gives up as soon as the first token arrives

        engine.generate(_req("a", PROMPT, 200), put, cancel, False)
        assert len(events) == 1 and isinstance(events[0], Chunk)
        events.clear()
        engine.generate(_req("b", PROMPT, 200), put, cancel, False)  # given up before it started
        assert events == []
        # through the stream: closing it early leaves the worker free at once for the next request
        stream = backend.stream(_req("c", PROMPT, 400))
        assert isinstance(await anext(stream), Chunk)
        await stream.aclose()
        chunks, end = await collect(backend, _req("d", PROMPT, 3))
    finally:
        await backend.close()
    assert len(chunks) == 3 and end.native is not None and end.native.queue_ms is not None
    assert end.native.queue_ms >= 0
