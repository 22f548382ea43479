"""The load commands end to end: open-loop runs, sweeps and replays against the simulator, and the agent,
batch and replay workloads on the real embedded engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import read_records, run_cli

pytestmark = pytest.mark.slow

FAST_SIM = ["--backend", "sim", "--backend-arg", "ttft_ms=5", "--backend-arg", "itl_ms=1", "--no-progress"]


def summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return data


@pytest.mark.parametrize(("arrival", "extra"), [("poisson", []), ("gamma", ["--burstiness", "0.25"])])
def test_open_loop_run_holds_its_schedule(
    tmp_path: Path, cache_dir: Path, arrival: str, extra: list[str]
) -> None:
    out = tmp_path / "run"
    args = ["run", "chat", "--rate", "40", "--arrival", arrival, *extra, "--duration", "6s"]
    res = run_cli([*args, "--max-tokens", "8", "--out", str(out), *FAST_SIM], cache_dir, timeout=120)
    assert res.returncode == 0, res.stderr
    recs = [r for r in read_records(out) if r["stage"] == "steady"]
    assert len(recs) > 150 and all(r["schedule_lag_ms"] >= 0 for r in recs)
    load = summary(out)["scenarios"]["chat"]["load"]
    assert load["arrival"] == arrival and load["rate_requested"] == 40
    # the client kept to its own schedule; the schedule itself is random around the requested rate
    assert load["rate_error_vs_schedule_pct"] == pytest.approx(0, abs=2)
    assert load["rate_scheduled"] == pytest.approx(40, rel=0.25)
    if arrival == "gamma":
        assert load["burstiness_measured"] < 0.6  # configured 0.25: far burstier than Poisson's 1
    assert "schedule lag p50" in res.stdout


def test_sweep_prints_the_curve_and_the_knee(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "chat", "--over", "concurrency", "--values", "1,2,4", "--stage-requests", "12"]
    res = run_cli([*args, "--max-tokens", "16", "--out", str(out), *FAST_SIM], cache_dir, timeout=120)
    assert res.returncode == 0, res.stderr
    curve = summary(out)["sweep"]
    assert [p["load"] for p in curve["points"]] == [1, 2, 4]
    assert curve["points"][2]["throughput"] > curve["points"][0]["throughput"] * 2  # the simulator scales
    assert curve["knee"] is not None and "knee" in res.stdout
    labels = {r["load_stage"] for r in read_records(out)}
    assert labels == {"concurrency=1", "concurrency=2", "concurrency=4"}


def test_replay_keeps_the_traces_clock_and_lengths(tmp_path: Path, cache_dir: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    lines = [{"timestamp": 10 + i * 0.5, "prompt_tokens": 40 + i, "output_tokens": 3 + i} for i in range(6)]
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "replay"
    res = run_cli(
        ["replay", str(trace), "--speed", "2", "--out", str(out), *FAST_SIM], cache_dir, timeout=120
    )
    assert res.returncode == 0, res.stderr
    recs = sorted(read_records(out), key=lambda r: r["intended_offset_ms"])
    assert [r["intended_offset_ms"] - recs[0]["intended_offset_ms"] for r in recs] == pytest.approx(
        [0, 250, 500, 750, 1000, 1250], abs=0.01
    )
    assert [r["output_tokens"] for r in recs] == [3, 4, 5, 6, 7, 8]
    # the simulator's tokenizer made every prompt exactly the traced length
    assert [r["prompt_tokens"] for r in recs] == [r["requested_prompt_tokens"] for r in recs]


def test_agent_chains_batches_and_replay_on_the_embedded_engine(tmp_path: Path, cache_dir: Path) -> None:
    common = ["--no-progress", "--warmup", "0"]
    agent = tmp_path / "agent"
    res = run_cli(
        ["run", "agent_steps", "--requests", "4", "--concurrency", "1", "--out", str(agent), *common],
        cache_dir,
    )
    assert res.returncode == 0, res.stderr
    chains = [json.loads(x) for x in (agent / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 1 and chains[0]["steps_done"] == 4, chains
    steps = sorted(read_records(agent), key=lambda r: r["step"])
    prompts = [r["prompt_tokens"] for r in steps]
    assert prompts == sorted(prompts) and prompts[-1] > prompts[0] + 60  # each step carries the one before

    batch = tmp_path / "batch"
    res = run_cli(["run", "batch_prefill", "--requests", "8", "--out", str(batch), *common], cache_dir)
    assert res.returncode == 0, res.stderr
    recs = read_records(batch)
    assert (
        len(recs) == 8 and len({r["batch_id"] for r in recs}) == 1 and all(r["status"] == "ok" for r in recs)
    )
    assert summary(batch)["scenarios"]["batch_prefill"]["throughput"]["prompt_tok_s"] > 0

    trace = tmp_path / "trace.jsonl"
    lines = [{"timestamp": i * 0.4, "prompt_tokens": 64, "output_tokens": 4} for i in range(3)]
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    replay = tmp_path / "replay"
    res = run_cli(["replay", str(trace), "--out", str(replay), "--no-progress"], cache_dir)
    assert res.returncode == 0, res.stderr
    recs = read_records(replay)
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    # prompts cut with the engine's own tokenizer: within a few tokens of the trace (template and BOS)
    assert all(abs(r["prompt_tokens"] - 64) <= 12 for r in recs), [r["prompt_tokens"] for r in recs]
    manifest = json.loads((replay / "manifest.json").read_text())
    assert manifest["trace"]["prompt_lengths"] == "backend tokenizer"


def test_a_hundred_thousand_requests_at_concurrency_512_give_exactly_as_many_records(
    tmp_path: Path, cache_dir: Path
) -> None:
    out = tmp_path / "big"
    sim = ["--backend", "sim", "--backend-arg", "ttft_ms=0", "--backend-arg", "itl_ms=0", "--no-progress"]
    args = [
        "run",
        "chat",
        "--requests",
        "100000",
        "--concurrency",
        "512",
        "--warmup",
        "0",
        "--max-tokens",
        "4",
    ]
    res = run_cli([*args, "--out", str(out), *sim], cache_dir, timeout=900)
    assert res.returncode == 0, res.stderr
    seqs: list[int] = []
    statuses: dict[str, int] = {}
    with (out / "records.jsonl").open() as fh:
        for line in fh:
            r = json.loads(line)
            seqs.append(r["seq"])
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    assert len(seqs) == 100_000
    assert sorted(seqs) == list(range(100_000))  # every request once, none lost, none doubled
    assert statuses == {"ok": 100_000}
    assert summary(out)["scenarios"]["chat"]["requests"]["steady"] == 100_000
