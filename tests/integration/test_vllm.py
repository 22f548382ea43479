"""Against a real vLLM (its CPU build) serving the built-in Gemma 3 270M: streamed chat and completions with
usage, exact prompt lengths through its /tokenize, its own metrics scraped beside the run and agreeing
with the records, a warm prefix cache noticed and a reset that removes it, a sweep whose knee vLLM's own
queue explains, the daemon probing it, a study variant served by it, and degraded records when it dies
mid-run. The server is started once (about two minutes) and kept small: two sequences at once, short
prompts, a few output tokens each (decoding runs at a few tokens a second on two cores)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import read_records, run_cli, start_cli, wait_for
from tests.integration.test_html_report import check

pytestmark = pytest.mark.slow

QUIET = ["--no-progress", "--energy", "off"]


def against(vllm: Any) -> list[str]:
    return ["--backend", "openai", "--base-url", vllm.url]


def small(requests: int = 3, *, tokens: str = "48", out: str = "4") -> list[str]:
    return ["--input-tokens", tokens, "--output-tokens", out, "--requests", str(requests), "--warmup", "0"]


def load(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    manifest = json.loads((run / "manifest.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return [r for r in read_records(run) if r["stage"] == "steady"], manifest, summary


def test_streams_chat_and_completions_with_exact_lengths_and_its_own_metrics_agree(
    vllm: Any, tmp_path: Path, cache_dir: Path
) -> None:
    for endpoint in ("chat", "completions"):
        out = tmp_path / endpoint
        args = ["run", "synthetic", "--endpoint", endpoint, *small(), "--concurrency", "2", "--out", str(out)]
        done = run_cli([*args, *against(vllm), *QUIET], cache_dir, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        recs, manifest, summary = load(out)
        assert len(recs) == 3
        for r in recs:
            assert r["status"] == "ok" and r["chunks"] >= 1, r
            assert r["prompt_tokens"] == r["requested_prompt_tokens"], r  # cut with vLLM's own /tokenize
            assert r["output_tokens"] == 4 and r["token_source"] == "server", r  # usage (stream_options)
        assert manifest["workload"]["synthetic"]["lengths"] == "server tokenizer"
        scraped = manifest["server_metrics"]["endpoints"][0]
        assert (
            scraped["engine"] == "vllm" and scraped["url"] == vllm.url + "/metrics" and scraped["errors"] == 0
        )
        assert manifest["prefix_cache"]["resets"][0]["how"] == "vllm: POST /reset_prefix_cache"
        stage = summary["server"]["stages"][0]
        # the server's own counters over the stage's window are the records' own sums
        assert stage["generation_tokens"] == sum(r["output_tokens"] for r in recs)
        assert stage["prompt_tokens"] == sum(r["prompt_tokens"] for r in recs)
        assert stage["ttft"]["count"] == 3 and stage["running"]["peak"] <= 2
        assert 0 <= stage["ttft_client_and_network_ms"] < stage["ttft_wall_mean_ms"]
        assert (out / "server_metrics.csv").stat().st_size > 0
        assert "server          steady (vllm)" in done.stdout + done.stderr


def test_a_warm_prefix_cache_is_flagged_and_the_reset_removes_it(
    vllm: Any, tmp_path: Path, cache_dir: Path
) -> None:
    """The same seeded prompts three times: cold, again with the cache kept (most prompt tokens hit, and
    the summary says so), and again with the reset (cold figures back, no flag)."""
    args = [
        "run",
        "synthetic",
        *small(2, tokens="300", out="2"),
        "--concurrency",
        "1",
        *against(vllm),
        *QUIET,
    ]
    figures = {}
    for name, policy in (("cold", "reset"), ("warm", "keep"), ("reset", "reset")):
        out = tmp_path / name
        done = run_cli([*args, "--prefix-cache", policy, "--out", str(out)], cache_dir, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        recs, manifest, summary = load(out)
        figures[name] = (recs, manifest, summary, done.stdout + done.stderr)
    cold, warm, again = figures["cold"], figures["warm"], figures["reset"]
    ratio = {k: v[2]["server"]["stages"][0]["prefix_hit_ratio"] for k, v in figures.items()}
    assert ratio["cold"] < 0.5 and ratio["reset"] < 0.5  # only within-run reuse of the first blocks
    assert ratio["warm"] > 0.7, ratio  # the first run's prompts, still cached
    assert warm[2]["server"]["flags"] and "not reset" in warm[2]["server"]["flags"][0]
    assert "WARNING" in warm[3] and not cold[2]["server"]["flags"] and not again[2]["server"]["flags"]
    assert warm[1]["prefix_cache"] == {"policy": "keep", "resets": []}
    assert again[1]["prefix_cache"]["resets"][0]["ok"] is True
    # the records say the same: vLLM's cached prompt tokens per request
    assert all(r["cached_prompt_tokens"] >= 256 for r in warm[0])
    assert all(r["cached_prompt_tokens"] < 256 for r in again[0])
    assert warm[2]["scenarios"]["synthetic"]["prefix_cache"]["token_hit_rate"] > 0.7


def test_a_sweep_knee_is_explained_by_the_servers_own_queue(
    vllm: Any, tmp_path: Path, cache_dir: Path
) -> None:
    """vLLM runs two sequences at once here: at four clients it queues the rest, and the sweep says so."""
    out = tmp_path / "sweep"
    args = ["sweep", "synthetic", "--over", "concurrency", "--values", "2,4", "--stage-requests", "8"]
    args += [
        "--input-tokens",
        "48",
        "--output-tokens",
        "6",
        "--warmup",
        "0",
        "--server-metrics-interval",
        "250ms",
    ]
    done = run_cli([*args, *against(vllm), *QUIET, "--out", str(out)], cache_dir, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    points = {p["stage"]: p for p in summary["sweep"]["points"]}
    assert points["concurrency=2"]["server"]["running_peak"] == 2
    assert points["concurrency=4"]["server"]["waiting_peak"] >= 1
    stages = {st["stage"]: st for st in summary["server"]["stages"]}
    assert stages["concurrency=4"]["queue_time"]["mean_s"] > stages["concurrency=2"]["queue_time"]["mean_s"]
    # the page a browser renders puts the server's own state on the latency figure's clock
    check(out / "report.html", {"latency-over-time", "server-timeline", "sweep-curve"}, "vllm-sweep")
    saturated = summary["sweep"]["saturated"]
    if saturated is not None:  # throughput stopped rising: the server's queue is named as the cause
        assert "queued at the server" in saturated["server"], saturated
        assert "the server says" in done.stdout


def test_the_daemon_probes_vllm(vllm: Any, tmp_path: Path, cache_dir: Path) -> None:
    from tests.vllm.server import free_port

    port = free_port()
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"""
metrics: {{host: 127.0.0.1, port: {port}}}
probe: {{interval: 1s, jitter: 0.1, max_concurrency: 1, timeout: 60s, max_tokens: 2, grace: 5s}}
sampling: {{every: 1, dir: {tmp_path / "samples"}}}
server_metrics: {{interval: 0.5s}}
targets:
  - name: vllm
    backend: openai
    args: {{base_url: "{vllm.url}"}}
    scenario: micro
"""
    )
    proc = start_cli(["daemon", "--config", str(config)], cache_dir)
    base = f"http://127.0.0.1:{port}"

    def probes() -> dict[str, Any]:
        import urllib.request

        try:
            with urllib.request.urlopen(base + "/status", timeout=2) as r:
                return dict(json.loads(r.read())["targets"]["vllm"])
        except (OSError, ValueError, KeyError):
            return {}

    try:
        wait_for(lambda: (probes().get("last") or {}).get("status") == "ok", 120, "a good probe of vLLM")
        assert probes()["up"] is True

        # the daemon scrapes vLLM's own metrics beside its probes, and /status shows the latest
        def scrapes() -> int:
            endpoints = (probes().get("server") or {}).get("endpoints") or [{}]
            return int(endpoints[0].get("scrapes", 0))

        wait_for(lambda: scrapes() >= 3, 30, "three scrapes of vLLM's metrics")
        server = probes()["server"]["endpoints"][0]
        assert server["engine"] == "vllm" and server["errors"] == 0 and "waiting" in server["latest"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err
    series = (tmp_path / "samples" / "server_metrics-vllm.csv").read_text()
    assert "vllm:num_requests_running" in series and "vllm:time_to_first_token_seconds_bucket" in series


def test_a_study_variant_served_by_vllm(vllm: Any, tmp_path: Path, cache_dir: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        f"""
name: on-vllm
baseline: sim
variants:
  sim: {{backend: sim}}
  vllm: {{backend: openai, base_url: "{vllm.url}", description: the CPU build of vLLM}}
scenarios: [micro]
repetitions: 1
requests: 2
warmup: 0
max_tokens: 2
"""
    )
    out = tmp_path / "study"
    done = run_cli(["study", str(study), "--out", str(out), "--no-progress"], cache_dir, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    cell = out / "cells" / "vllm--micro--r1"
    records = read_records(cell)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    manifest = json.loads((cell / "manifest.json").read_text())
    assert manifest["server_metrics"]["endpoints"][0]["engine"] == "vllm"
    assert manifest["prefix_cache"]["resets"][0]["ok"] is True


def test_the_fleet_dashboards_server_panels_read_vllms_own_series(
    vllm: Any, tmp_path: Path, cache_dir: Path
) -> None:
    """A real Prometheus scrapes vLLM from before a run to after it: each server panel of the fleet
    dashboard, asked over that span, equals what the run's own scrape of vLLM says, or vLLM itself."""
    from agent.core.server_metrics import parse_exposition
    from agent.transport.scrape import fetch
    from tests.integration.test_dashboard_figures import panels
    from tests.integration.test_prometheus import free_port, promql
    from tests.promtools import Prometheus

    def one(query: str) -> float:
        values = [float(series["value"][1]) for series in promql(prom.api, query)]
        assert len(values) == 1, (query, values)
        return values[0]

    def scraped() -> bool:
        try:
            return bool(promql(prom.api, 'up{job="vllm"} == 1'))
        except OSError:
            return False

    prom = Prometheus(tmp_path, free_port(), [vllm.url.removeprefix("http://")], job="vllm")
    try:
        wait_for(scraped, 60, "a first scrape of vLLM")
        time.sleep(2.5)  # scrapes before the load: every rate starts from the counters' values then
        out = tmp_path / "run"
        args = [
            "run",
            "synthetic",
            *small(2, tokens="300", out="2"),
            "--concurrency",
            "2",
            "--prefix-cache",
            "keep",
        ]
        done = run_cli([*args, *against(vllm), *QUIET, "--out", str(out)], cache_dir, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        time.sleep(3.5)  # scrapes after it
        stage = json.loads((out / "summary.json").read_text())["server"]["stages"][0]
        now = {s.name: s.value for s in parse_exposition(fetch(vllm.url + "/metrics", 5))}
        fleet = {k.removeprefix("fleet / "): v for k, v in panels().items() if k.startswith("fleet / ")}
        ttft_p95 = one(fleet["Canary TTFT p95 beside the server's own TTFT p95 / B"])
        assert ttft_p95 == pytest.approx(stage["ttft"]["p95_s"], rel=1e-3)
        hit_rate = one(fleet["Server KV cache use and prefix-cache hit rate / B"])
        assert hit_rate == pytest.approx(stage["prefix_hit_ratio"], rel=1e-3, abs=1e-6)
        assert (
            one(fleet["Server KV cache use and prefix-cache hit rate / A"]) == now["vllm:kv_cache_usage_perc"]
        )
        assert one(fleet["Server queue: running and waiting / A"]) == now["vllm:num_requests_running"] == 0
        assert one(fleet["Server queue: running and waiting / B"]) == now["vllm:num_requests_waiting"] == 0
        assert one(fleet["Server preemptions per second / A"]) == stage["preemptions"] == 0
    finally:
        prom.stop()


def test_a_vllm_killed_mid_run_leaves_degraded_records(vllm: Any, tmp_path: Path, cache_dir: Path) -> None:
    """Last in this file: the session's server is killed here (nothing after it uses it)."""
    out = tmp_path / "killed"
    args = ["run", "synthetic", *small(6, out="24"), "--concurrency", "2", *against(vllm), *QUIET]
    proc = start_cli([*args, "--out", str(out)], cache_dir)
    try:
        wait_for(lambda: len(read_records(out)) >= 1, 300, "a first record")
        vllm.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err, err[-3000:]
    recs = [r for r in read_records(out) if r["stage"] == "steady"]
    degraded = [r for r in recs if r["status"] == "degraded"]
    assert degraded and all(r["reason"] for r in degraded), recs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["server_metrics"]["endpoints"][0]["errors"] >= 1  # the scrapes failed once it died
    assert (out / "summary.json").is_file()
