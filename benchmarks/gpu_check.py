"""The GPU proof: NVML, the power poller, the idle baseline, in-process energy and compile evidence.

    python benchmarks/gpu_check.py [--out DIR] [--cpu]

One command, one JSON report (``DIR/gpu_check.json``) and a short Markdown summary (``DIR/gpu_check.md``):

1. NVML facts — device, driver, whether the total-energy counter exists — and the power poller's real
   period distribution at 100 ms and 20 ms with its own CPU cost.
2. The idle baseline through ``infermeter calibrate``, and its spread over five sub-windows.
3. The in-process ``transformers`` backend on the GPU with a model built from a Gemma-3-270M-shaped config
   and random weights (nothing is downloaded): a chat scenario (256-token decodes) and a batched
   prefill scenario, each at 100 ms and 20 ms polling, through ``infermeter run``. Reported: the share
   of request, prefill and decode windows the n ≥ 2 gate keeps; counter and polled energy side by side
   on the same windows (stage macro windows and request windows); J/token from the steady-state macro
   window; and the run's Prometheus energy metrics, scraped once and checked against the records.
4. ``--compile all`` on the same model: compile and warm time apart from the requests, frames compiled,
   graph breaks, and the frames compiled under the clock.

Without a GPU (or with ``--cpu``) the same command runs its CPU path in about a minute: NVML's absence is
reported with its reason, and a synthetic power trace, replayed live and labelled as such, stands in for
the sensor so that every analysis above still runs; the model is a tiny one of the same family on CPU.
No figure of the CPU path is a measurement of power. CI runs that path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.energy.base import Baseline, PowerSample, baseline_from, window  # noqa: E402
from agent.energy.meter import PowerPoller  # noqa: E402
from agent.energy.sources import NullSource, NvmlSource, ReplaySource, open_source  # noqa: E402

SCHEMA = 1
PARTS = ("poller", "baseline", "chat", "batch", "compile")
POLLS_MS = (100, 20)
#: Gemma 3 270M's text model, as its published config gives it; the weights here are random
GEMMA3_270M = {
    "vocab_size": 262_144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "max_position_embeddings": 32_768,
    "sliding_window": 512,
    "rope_theta": 1_000_000.0,
}
TINY = {
    **GEMMA3_270M,
    "vocab_size": 0,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "head_dim": 32,
}
CORPUS = [
    "the model streams tokens at a steady pace while we measure every gap between them",
    "prefill reads the whole prompt once and decode writes one token at a time on the device",
    "latency is a distribution so we report percentiles and never only the mean of it",
    "energy over the idle baseline counts only where the power samples could see the event",
] * 30


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one path runs: the model's size, the scenarios' sizes, how long to measure idle."""

    gpu: bool
    model: dict[str, Any]
    dtype: str
    chat_requests: int
    chat_tokens: int
    batches: int
    batch_size: int
    prompt_words: int
    poll_s: float
    calibrate_s: float
    compile_requests: int
    compile_tokens: int
    timeout_s: float
    compile_timeout_s: float


GPU_PLAN = Plan(True, GEMMA3_270M, "bfloat16", 12, 256, 12, 16, 400, 3.0, 10.0, 4, 64, 220.0, 200.0)
# Limits are bounds, not expectations: on a busy laptop compiling the tiny model can take minutes.
CPU_PLAN = Plan(False, TINY, "float32", 6, 16, 3, 4, 40, 1.0, 1.0, 2, 8, 300.0, 600.0)


# ---- 1. NVML facts and the poller ------------------------------------------------------------------
def nvml_facts(source: Any) -> dict[str, Any]:
    """What NVML says about the machine (or why it says nothing)."""
    facts: dict[str, Any] = {"source": source.describe()}
    if isinstance(source, NvmlSource):
        import pynvml

        facts["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        facts["nvml_version"] = str(pynvml.nvmlSystemGetNVMLVersion())
        facts["power_limit_w"] = [
            pynvml.nvmlDeviceGetEnforcedPowerLimit(pynvml.nvmlDeviceGetHandleByIndex(i)) / 1000
            for i in source.gpus()
        ]
    return facts


def poller_periods(source: Any, seconds: float) -> list[dict[str, Any]]:
    """The poller's real period distribution and its own CPU time per second, at each poll period."""
    rows = []
    for ms in POLLS_MS:
        poller = PowerPoller(source, ms / 1000)
        t0 = time.perf_counter()
        poller.start()
        time.sleep(seconds)
        poller.stop()
        wall = time.perf_counter() - t0
        q = poller.quality()
        rows.append({**q, "cpu_ms_per_s": q.get("cpu_ms", 0.0) / wall, "seconds": round(wall, 3)})
    return rows


# ---- 2. idle baseline -----------------------------------------------------------------------------
def baseline_spread(source: Any, seconds: float, parts: int = 5) -> dict[str, Any]:
    """Idle power in ``parts`` consecutive sub-windows: how much a baseline depends on when it was taken."""
    samples: list[PowerSample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples += source.read()
        time.sleep(0.1)
    ticks = sorted({s.t_ns for s in samples})
    size = max(2, len(ticks) // parts)
    means = []
    for i in range(0, len(ticks) - size + 1, size):
        keep = set(ticks[i : i + size])
        means.append(baseline_from([s for s in samples if s.t_ns in keep]).mean_w)
    whole = baseline_from(samples, source.name)
    return {**whole.to_dict(), "sub_window_means_w": means, "sub_window_range_w": max(means) - min(means)}


# ---- 3. the model, the scenarios, the runs --------------------------------------------------------
def build_model(path: Path, plan: Plan) -> dict[str, Any]:
    """A Gemma 3 causal LM from a config with random (seeded) weights and a byte-level BPE trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<unk>", "<eos>", "<pad>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    ids = {name: fast.convert_tokens_to_ids(name) for name in ("<eos>", "<pad>", "<bos>")}
    shape = {**plan.model, "vocab_size": plan.model["vocab_size"] or len(fast)}
    config = Gemma3TextConfig(
        **shape, eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"]
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    device = "cuda" if plan.gpu else "cpu"
    with torch.device(device):
        model = Gemma3ForCausalLM(config).to(getattr(torch, plan.dtype))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    del model
    if plan.gpu:
        torch.cuda.empty_cache()
    return {
        "config": shape,
        "parameters": params,
        "dtype": plan.dtype,
        "build_s": time.perf_counter() - t0,
        "weights": "random (seed 0)",
        "tokenizer": f"byte-level BPE, {len(fast)} tokens, trained here",
    }


def scenarios(folder: Path, plan: Plan) -> dict[str, Path]:
    """A chat scenario with long decodes and a batched prefill scenario with long prompts."""
    words = " ".join(CORPUS).split()
    prompts = [" ".join(words[i : i + n]) for i, n in ((0, 12), (40, 30), (90, 20), (150, 45))]
    long = [" ".join(words[i : i + plan.prompt_words]) for i in (0, 17, 33, 51)]
    chat = _scenario("gpu_chat", prompts, plan.chat_tokens, plan.chat_requests, 2)
    batch = _scenario(
        "gpu_batch_prefill",
        long,
        1,
        plan.batches * plan.batch_size,
        1,
        batch={"size": plan.batch_size, "mode": "batched"},
    )
    out = {}
    for sc in (chat, batch):
        path = folder / f"{sc['name']}.json"
        path.write_text(json.dumps(sc))
        out[sc["name"]] = path
    return out


def _scenario(
    name: str, prompts: list[str], tokens: int, requests: int, warmup: int, **extra: Any
) -> dict[str, Any]:
    """A greedy, fixed-length completions scenario, one request at a time."""
    return {
        "name": name,
        "endpoint": "completions",
        "prompts": prompts,
        "output_tokens": tokens,
        "ignore_eos": True,
        "requests": requests,
        "concurrency": 1,
        "warmup": warmup,
        "sampling": {"temperature": 0},
        "timeout": {"first_token_s": 120, "total_s": 300},
        **extra,
    }


def synthetic_trace(path: Path, seconds: float = 600.0) -> Path:
    """The CPU path's stand-in sensor: 60 W idle for 1 s, then a 150–170 W load, every 10 ms, with a counter.

    Labelled synthetic everywhere it appears; it only lets the same analyses run without a GPU.
    """
    rows, energy_mj = ["timestamp_s,gpu,power_w,energy_mj"], 0.0
    for i in range(int(seconds * 100)):
        t = i / 100
        power = 60.0 + (i % 7) * 0.2 if t < 1 else 150.0 + (i % 11) * 2.0
        rows.append(f"{t:.2f},0,{power:.1f},{int(energy_mj)}")
        energy_mj += power * 10
    path.write_text("\n".join(rows) + "\n")
    return path


def cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``infermeter`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_scenario(
    scenario: Path,
    out: Path,
    model: Path,
    energy: str,
    poll_ms: int,
    env: dict[str, str],
    plan: Plan,
    *,
    scrape: bool = False,
    extra: tuple[str, ...] = (),
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """One ``infermeter run`` on the in-process backend; with ``scrape``, /metrics read once at its end."""
    limit = timeout_s or plan.timeout_s
    port = free_port()
    args = _run_args(scenario, out, model, energy, poll_ms, plan, extra)
    if scrape:
        args += ["--serve-metrics", "--metrics-port", str(port), "--metrics-linger", "20s"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = _StderrWatch(proc)
    scraped = None
    if scrape and watch.lingering.wait(limit):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            scraped = resp.read().decode()
        proc.terminate()  # ends the linger; the run's files are already written
    try:
        proc.wait(timeout=max(1.0, limit - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"timed out after {limit:g} s", "stderr": watch.text()[-2000:]}
    stderr = watch.text()
    result: dict[str, Any] = {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0 and not (scraped is not None and (out / "summary.json").exists()):
        return {**result, "error": stderr[-2000:]}
    result["stderr_tail"] = stderr[-600:]
    if scraped is not None:
        result["metrics_text"] = scraped
    return result


def _run_args(
    scenario: Path, out: Path, model: Path, energy: str, poll_ms: int, plan: Plan, extra: tuple[str, ...]
) -> list[str]:
    """The ``infermeter run`` command line for one scenario on the in-process backend."""
    args = [
        "run",
        str(scenario),
        "--backend",
        "transformers",
        "--model",
        str(model),
        "--out",
        str(out),
        "--backend-arg",
        f"dtype={plan.dtype}",
        "--energy",
        energy,
        "--energy-interval",
        f"{poll_ms}ms",
        "--no-progress",
        *extra,
    ]
    if not plan.gpu:
        args += ["--backend-arg", "threads=2"]
    return args


class _StderrWatch:
    """Collects a child's standard error on a thread, and says when it starts lingering on /metrics."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc, self._lines = proc, list[str]()
        self.lingering = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._lines.append(line)
            if line.startswith("serving metrics"):
                self.lingering.set()

    def text(self) -> str:
        """Everything read so far (waits briefly for the reader once the child has ended)."""
        if self._proc.poll() is not None:
            self._thread.join(5)
        return "".join(self._lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


MEASURED = ("good", "counter")


def keep_rates(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of request, prefill and decode windows the gate kept (good or counter), and how."""
    out: dict[str, Any] = {}
    measured = [r for r in records if r["status"] == "ok" and not r["is_warmup"]]
    for phase, key in (
        ("request", "energy_quality"),
        ("prefill", "prefill_energy_quality"),
        ("decode", "decode_energy_quality"),
    ):
        qualities = [r.get(key) for r in measured if r.get(key) is not None]
        counts = {q: qualities.count(q) for q in sorted(set(qualities))}
        kept = sum(counts.get(q, 0) for q in MEASURED)
        out[phase] = {
            "windows": len(qualities),
            "kept": kept,
            "keep_rate": kept / len(qualities) if qualities else None,
            "by_quality": counts,
        }
    return out


def counter_vs_polled(run: Path, records: list[dict[str, Any]], interval_s: float) -> dict[str, Any]:
    """The same windows measured both ways: polled power × time, and the energy counter's difference."""
    manifest = json.loads((run / "manifest.json").read_text())
    base = manifest["energy"].get("baseline")
    if not base or not (run / "power.csv").exists():
        return {"available": False, "reason": manifest["energy"].get("status")}
    baseline = Baseline(base["mean_w"], base["sd_w"], base["n"], base.get("source", ""))
    samples = ReplaySource(run / "power.csv").samples(0)
    if not any(s.energy_mj is not None for s in samples):
        return {"available": False, "reason": "the GPU has no total-energy counter"}
    polled = [dataclasses.replace(s, energy_mj=None) for s in samples]
    counted = [dataclasses.replace(s, power_w=None) for s in samples]
    energy = json.loads((run / "energy.json").read_text())
    origin = manifest["clock"]["origin_perf_counter_ns"]  # records' offsets count from here

    def both(start: int, end: int) -> tuple[float | None, float | None]:
        p = window(polled, start, end, baseline, interval_s=interval_s)
        c = window(counted, start, end, baseline, interval_s=interval_s)
        return p.energy_j, c.energy_j

    stages = []
    for row in energy.get("stages", []):
        p, c = both(row["start_ns"], row["end_ns"])
        stages.append(
            {
                "stage": row["stage"],
                "duration_s": row["duration_s"],
                "polled_j": p,
                "counter_j": c,
                "ratio": c / p if p and c is not None else None,
            }
        )
    ratios = []
    for r in records:
        if r["status"] != "ok" or r["is_warmup"] or r.get("e2e_ms") is None:
            continue
        sent = origin + round(r["sent_offset_ms"] * 1e6)
        end = origin + round((r["intended_offset_ms"] + r["e2e_ms"]) * 1e6)
        p, c = both(sent, end)
        if p and c is not None:
            ratios.append(c / p)
    return {
        "available": True,
        "stages": stages,
        "requests_compared": len(ratios),
        "request_ratio_median": statistics.median(ratios) if ratios else None,
        "request_ratio_p10_p90": _p10_p90(ratios),
    }


def _p10_p90(values: list[float]) -> list[float] | None:
    if len(values) < 2:
        return None
    q = statistics.quantiles(values, n=10)
    return [q[0], q[-1]]


def metric_invariants(text: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The scraped energy metrics against the records and against physics."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values.setdefault(s.name, []).append(s.value)
    recorded = sum(
        r["energy_j"]
        for r in records
        if r["status"] == "ok"
        and not r["is_warmup"]
        and r.get("energy_quality") in MEASURED
        and r.get("energy_j") is not None
    )
    energy = sum(values.get("infermeter_energy_joules_total", [0.0]))
    over = values.get("infermeter_gpu_energy_over_baseline_joules_total", [])
    checks = {
        "energy_total_equals_measured_records": abs(energy - recorded) <= 1e-6 * max(1.0, recorded),
        "gpu_energy_over_baseline_non_negative": bool(over) and all(v >= 0 for v in over),
        "power_in_board_range": all(0 < v < 2000 for v in values.get("infermeter_gpu_power_watts", [])),
        "ratios_in_0_1": all(
            0 <= v <= 1
            for name in (
                "infermeter_gpu_utilization_ratio",
                "infermeter_gpu_memory_used_ratio",
                "infermeter_energy_no_data_ratio",
            )
            for v in values.get(name, [])
        ),
    }
    return {
        "checks": checks,
        "all_hold": all(checks.values()),
        "energy_joules_total": energy,
        "records_energy_j": recorded,
        "gpu_energy_over_baseline_j": sum(over) if over else None,
        "gpu_power_w": values.get("infermeter_gpu_power_watts"),
    }


def summarise_run(run: Path, interval_s: float, metrics_text: str | None = None) -> dict[str, Any]:
    """What one run shows: gate keep-rates, counter vs polled, J/token, phase split, metrics invariants."""
    records = read_jsonl(run / "records.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    ok = [r for r in records if r["status"] == "ok" and not r["is_warmup"]]
    energy = summary.get("energy") or {}
    out: dict[str, Any] = {
        "records": len(records),
        "ok": len(ok),
        "energy_status": energy.get("status"),
        "poller": energy.get("poller"),
        "keep_rates": keep_rates(records),
        "stages": [
            {
                k: st.get(k)
                for k in (
                    "stage",
                    "quality",
                    "duration_s",
                    "samples",
                    "mean_power_w",
                    "delta_power_w",
                    "energy_j",
                    "output_tokens",
                    "j_per_token",
                )
            }
            for st in energy.get("stages", [])
        ],
        "prefill_ms_p50": _median(r.get("prefill_ms") for r in ok),
        "decode_ms_p50": _median(r.get("decode_ms") for r in ok),
        "tpot_ms_p50": _median(r.get("tpot_ms") for r in ok),
        "ttft_ms_p50": _median(r.get("ttft_ms") for r in ok),
        "counter_vs_polled": counter_vs_polled(run, records, interval_s),
    }
    if metrics_text is not None:
        out["metrics"] = metric_invariants(metrics_text, records)
    return out


def _median(values: Any) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


# ---- the whole check ------------------------------------------------------------------------------
SECONDS: dict[str, float] = {}


def timed(name: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """Run one part and keep its time; a failure becomes ``{"error": …}`` and the rest goes on."""
    t0 = time.perf_counter()
    print(f"[gpu_check] {name} …", flush=True)
    try:
        value = fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - one part failing must not lose the others' figures
        value = {"error": f"{e.__class__.__name__}: {e}"}
    SECONDS[name] = round(time.perf_counter() - t0, 1)
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for the report and the runs")
    p.add_argument("--cpu", action="store_true", help="the CPU path even where a GPU is present")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"a comma-separated subset of {','.join(PARTS)} (a rerun)"
    )
    ns = p.parse_args(argv)
    parts = set(ns.parts.split(","))
    if not parts <= set(PARTS):
        p.error(f"unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    source = NullSource("--cpu asked for the CPU path") if ns.cpu else open_source("auto")
    gpu = isinstance(source, NvmlSource) and _cuda()
    plan = GPU_PLAN if gpu else CPU_PLAN
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "path": "gpu" if gpu else "cpu",
        "started_unix": time.time(),
        "host": {"python": platform.python_version(), "machine": platform.machine(), **_torch_facts()},
    }
    report["nvml"] = timed("nvml", nvml_facts, source)
    if gpu:
        energy, sensor = "nvml", source
        baseline_args: tuple[str, ...] = ()  # the calibrated baseline, stored by `infermeter calibrate`
    else:
        trace = synthetic_trace(out / "synthetic-power.csv")
        energy, sensor = f"replay:{trace}", ReplaySource(trace)
        baseline_args = ("--energy-baseline", "1s")  # each run replays the trace's idle second first
        report["sensor"] = "synthetic trace replayed live (no GPU): no figure below is a power measurement"
    report["parts"] = sorted(parts)
    if "poller" in parts:
        report["poller"] = timed("poller", poller_periods, sensor, plan.poll_s)
    if gpu and "baseline" in parts:
        report["baseline_spread"] = timed("baseline_spread", baseline_spread, sensor, plan.calibrate_s)
    source.close()
    env = {**os.environ, "INFERMETER__CACHE_DIR": str(out / "cache"), "PYTHONUNBUFFERED": "1"}
    cal = timed("calibrate", _calibrate, energy, plan, env)
    model = out / "model"
    report["model"] = timed("model", build_model, model, plan)
    runs = _scenario_runs(out, model, energy, env, plan, baseline_args, parts)
    report["runs"] = runs
    if "compile" in parts:
        report["compile"] = _compile_part(out, model, energy, env, plan, baseline_args, runs)
    report["calibrated_baseline"] = cal
    report["seconds"] = SECONDS
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _scenario_runs(
    out: Path,
    model: Path,
    energy: str,
    env: dict[str, str],
    plan: Plan,
    baseline_args: tuple[str, ...],
    parts: set[str],
) -> dict[str, Any]:
    """Each scenario asked for at each poll period, summarised; /metrics scraped on the first chat run."""
    runs: dict[str, Any] = {}
    for name, path in scenarios(out, plan).items():
        if name.removeprefix("gpu_").split("_")[0] not in parts:
            continue
        for ms in POLLS_MS:
            label, run_dir = f"{name}@{ms}ms", out / "runs" / f"{name}@{ms}ms"
            scrape = ms == POLLS_MS[0] and name == "gpu_chat"
            res = timed(
                label,
                run_scenario,
                path,
                run_dir,
                model,
                energy,
                ms,
                env,
                plan,
                scrape=scrape,
                extra=baseline_args,
            )
            if "error" not in res:
                text = res.pop("metrics_text", None)
                res.update(timed(f"{label} summary", summarise_run, run_dir, ms / 1000, text))
            runs[label] = res
    return runs


def _compile_part(
    out: Path,
    model: Path,
    energy: str,
    env: dict[str, str],
    plan: Plan,
    baseline_args: tuple[str, ...],
    runs: dict[str, Any],
) -> dict[str, Any]:
    """``--compile all``: compile time apart from the requests, and the decode it buys."""
    compile_dir = out / "runs" / "compile"
    res: dict[str, Any] = timed(
        "compile",
        run_scenario,
        _compile_scenario(out, plan),
        compile_dir,
        model,
        energy,
        POLLS_MS[0],
        env,
        plan,
        timeout_s=plan.compile_timeout_s,
        extra=("--compile", "all", "--backend-arg", "pad_to_multiple=64", *baseline_args),
    )
    if "error" in res:
        return res
    manifest = json.loads((compile_dir / "manifest.json").read_text())
    compiled = summarise_run(compile_dir, POLLS_MS[0] / 1000)
    return {
        **res,
        "evidence": manifest["backend"].get("compile"),
        "tpot_ms_p50_compiled": compiled["tpot_ms_p50"],
        "tpot_ms_p50_eager": runs.get("gpu_chat@100ms", {}).get("tpot_ms_p50"),
    }


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _torch_facts() -> dict[str, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        return {"torch": f"missing ({e})"}
    facts = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        facts["device"] = torch.cuda.get_device_name(0)
    return facts


def _calibrate(energy: str, plan: Plan, env: dict[str, str]) -> dict[str, Any]:
    """``infermeter calibrate``: the idle baseline later runs use."""
    proc = cli(["calibrate", "--energy", energy, "--seconds", f"{plan.calibrate_s:g}s"], env, plan.timeout_s)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1000:]}
    stored = json.loads((Path(env["INFERMETER__CACHE_DIR"]) / "energy-baseline.json").read_text())
    return {"line": proc.stderr.strip().splitlines()[-1], **stored["baseline"]}


def _compile_scenario(out: Path, plan: Plan) -> Path:
    words = " ".join(CORPUS).split()
    prompts = [" ".join(words[i : i + n]) for i, n in ((0, 12), (40, 30))]
    sc = _scenario("gpu_compile", prompts, plan.compile_tokens, plan.compile_requests, 1)
    path = out / "gpu_compile.json"
    path.write_text(json.dumps(sc))
    return path


def _runs_table(runs: dict[str, Any]) -> list[str]:
    """One row per run: kept windows, J/token, counter vs polled, TPOT."""
    lines = [
        "| run | ok | keep request / prefill / decode | J/token | counter ÷ polled (stage) | "
        "median counter ÷ polled (requests) | TPOT p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, run in runs.items():
        if "error" in run:
            lines.append(f"| {label} | error: {str(run['error'])[:80]} | | | | | |")
            continue
        kr = run.get("keep_rates", {})
        keep = " / ".join(_fmt(kr.get(k, {}).get("keep_rate"), 2) for k in ("request", "prefill", "decode"))
        stage = (run.get("stages") or [{}])[0]
        cvp = run.get("counter_vs_polled", {})
        ratio = (cvp.get("stages") or [{}])[0].get("ratio") if cvp.get("available") else None
        lines.append(
            f"| {label} | {run.get('ok')} | {keep} | {_fmt(stage.get('j_per_token'))} | {_fmt(ratio)} | "
            f"{_fmt(cvp.get('request_ratio_median'))} | {_fmt(run.get('tpot_ms_p50'))} |"
        )
    return lines


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    """The short summary people read."""
    host = report["host"]
    lines = [f"# GPU check ({report['path']} path)", ""]
    if "sensor" in report:
        lines += [f"**{report['sensor']}**", ""]
    lines.append(
        f"- device: {host.get('device', 'none')}; torch {host.get('torch')}, CUDA {host.get('cuda')}"
    )
    nvml = report.get("nvml", {})
    src = nvml.get("source", {})
    lines.append(
        f"- NVML: {src.get('gpus') or src.get('reason')}; driver {nvml.get('driver', '—')}; "
        f"energy counter: {src.get('energy_counter', '—')}"
    )
    for row in report.get("poller", []) if isinstance(report.get("poller"), list) else []:
        lines.append(
            f"- poller at {row['interval_ms']:g} ms: period p50 {_fmt(row.get('period_ms_p50'))} ms, "
            f"p99 {_fmt(row.get('period_ms_p99'))} ms, gaps > 2Δt {row.get('gaps_over_2x')}, "
            f"CPU {_fmt(row.get('cpu_ms_per_s'))} ms/s"
        )
    spread = report.get("baseline_spread")
    if isinstance(spread, dict) and "mean_w" in spread:
        lines.append(
            f"- idle: {spread['mean_w']:.1f} W ± {spread['sd_w']:.2f} W (n={spread['n']}); "
            f"sub-window means range {spread['sub_window_range_w']:.2f} W"
        )
    cal = report.get("calibrated_baseline") or {}
    if "mean_w" in cal:
        lines.append(f"- calibrate: {cal['mean_w']:.1f} W ± {cal['sd_w']:.2f} W (n={cal['n']})")
    model = report.get("model", {})
    if "parameters" in model:
        lines.append(
            f"- model: Gemma 3 config, {_fmt(model['parameters'] / 1e6)} M parameters, {model['dtype']}, "
            f"{model['weights']}"
        )
    lines += ["", *_runs_table(report.get("runs", {}))]
    metrics = next((r["metrics"] for r in report.get("runs", {}).values() if "metrics" in r), None)
    if metrics:
        lines += ["", f"- /metrics energy invariants hold: {metrics['all_hold']} {metrics['checks']}"]
    comp = report.get("compile", {})
    ev = comp.get("evidence") or {}
    warm = ev.get("warm") or {}
    if warm:
        lines.append(
            f"- compile (all, {ev.get('backend_actual')}): {warm['ms'] / 1000:.1f} s before the clock "
            f"({warm['compile_s']:.1f} s compiling), frames {warm['frames_compiled']}, graph breaks "
            f"{warm['graph_breaks']}, compiled under the clock {ev.get('compiles_measured')}; TPOT p50 "
            f"{_fmt(comp.get('tpot_ms_p50_compiled'))} ms compiled vs "
            f"{_fmt(comp.get('tpot_ms_p50_eager'))} ms eager"
        )
    elif "error" in comp:
        lines.append(f"- compile: error: {str(comp['error'])[:300]}")
    lines += ["", f"total {report.get('total_s')} s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
