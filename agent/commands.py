"""The load commands: ``run`` (one scenario or several at once), ``sweep``, ``replay``, ``import-trace``."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent import __version__
from agent.backends import create
from agent.backends.base import Backend, CliContext, args_type
from agent.energy.base import Baseline, EnergyError
from agent.energy.meter import EnergyMeter
from agent.energy.sources import open_source
from agent.errors import ConfigError
from agent.launch import EnergyPlan, Launch, LaunchResult, MetricsEndpoint, StagePlan, Tenant, targets_for
from agent.manifest import build_manifest, write_json_atomic
from agent.record import RequestRecord
from agent.redact import is_secret_key, remember
from agent.scenario import MAX_IN_FLIGHT, Scenario, load_scenario, parse_duration, resolve_scenario
from agent.settings import Settings
from agent.trace import PromptSynth, TokenCodec, load_trace, trace_requests, write_trace
from analysis.console import fmt, render_summary
from analysis.records import load_records
from analysis.summary import summarize, summarize_stages
from analysis.sweep import analyse, point, saturation
from exporters.http import MetricsServer
from exporters.prometheus import RecordMetrics

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "cmd_calibrate",
    "cmd_import_trace",
    "cmd_replay",
    "cmd_run",
    "cmd_sweep",
    "kv",
]

logger = structlog.get_logger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1


def kv(items: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not a YAML value"
            raise ConfigError(f"{flag} {item!r}: {problem} (quote the value if it is text)") from e
    return out


def _in_flight(sc: Scenario) -> int:
    """The most requests this scenario may keep in flight."""
    if sc.load.open_loop:
        return sc.load.max_concurrency or MAX_IN_FLIGHT
    if sc.batch is not None and sc.batch.mode == "concurrent":
        return sc.concurrency * sc.batch.size
    return sc.concurrency


def backend_args(ns: argparse.Namespace, settings: Settings, out: Path, in_flight: int) -> dict[str, Any]:
    """Backend arguments for ``in_flight`` requests, with ``--backend-arg`` values laid over them.

    Each backend reads the common flags itself (its Args model's ``from_cli``); nothing here knows a
    backend by name.
    """
    ctx = CliContext(
        base_url=getattr(ns, "base_url", None),
        model=getattr(ns, "model", None),
        model_path=getattr(ns, "model_path", None),
        compile=getattr(ns, "compile", None),
        openai_base_url=settings.openai.base_url,
        openai_model=settings.openai.model,
        openai_api_key=settings.openai.api_key,
        cache_dir=settings.cache_dir,
        out=out,
        in_flight=in_flight,
        uncapped=in_flight >= MAX_IN_FLIGHT,
    )
    args = {**args_type(ns.backend).from_cli(ctx), **kv(ns.backend_arg, "--backend-arg")}
    for key, value in args.items():
        if is_secret_key(key):
            remember(value)
    return args


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    def get(name: str) -> Any:
        return getattr(ns, name, None)  # replay has only some of the flags

    load = {
        "arrival": get("arrival"),
        "rate": get("rate"),
        "burstiness": get("burstiness"),
        "max_concurrency": get("max_concurrency"),
        "think_time": _duration(get("think_time"), "--think-time"),
        "seed": get("seed"),
        "lag_limit_ms": get("lag_limit_ms"),
    }
    if get("rate") is not None and get("arrival") is None:
        load["arrival"] = "poisson"  # a rate alone means open loop; Poisson is the usual default
    return {
        "requests": get("requests"),
        "duration": get("duration"),
        "concurrency": get("concurrency"),
        "warmup": get("warmup"),
        "cooldown": get("cooldown"),
        "output_tokens": get("output_tokens"),
        "load": load,
        "slo": {"ttft_ms": get("slo_ttft_ms"), "tpot_ms": get("slo_tpot_ms"), "e2e_ms": get("slo_e2e_ms")},
    }


def _duration(value: str | None, flag: str) -> float | None:
    """A duration flag in seconds (None when not given); a bad one is a one-line ConfigError."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from e


def scenario_for(name: str, ns: argparse.Namespace) -> Scenario:
    """A scenario by name or path with the command-line overrides applied.

    ``--duration`` alone makes the run time-bound (the scenario's request count no longer applies), and
    ``--requests`` alone makes it count-bound.
    """
    sc = load_scenario(resolve_scenario(name)).with_overrides(**_overrides(ns))
    requests, duration = getattr(ns, "requests", None), getattr(ns, "duration", None)
    if (requests is None) != (duration is None):
        drop = "requests" if requests is None else "duration"
        return sc.derive(sc.normalised() | {drop: None}, location="command line")
    return sc


#: What a run directory that never got to its first record may hold; such a directory can be reused.
_UNSTARTED = frozenset({"manifest.json", "engine.log", "simulator.log"})


def _out_dir(ns: argparse.Namespace, name: str, *, make: bool, path: Path | None = None) -> Path:
    """A fresh run directory: new, empty, or one of ours that never wrote a record; anything else refused.

    ``make`` False only checks (and names the default); True checks ``path`` again and creates it.
    """
    out: Path = path or ns.out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} is not a directory; name a new or empty directory")
    if out.is_dir():
        entries = list(out.iterdir())
        if entries and not _unstarted_run(out, entries):
            held = "already holds a run" if (out / "records.jsonl").exists() else "is not empty"
            raise ConfigError(f"--out {out} {held}; choose another --out (nothing was overwritten)")
    if not make:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: {e.strerror or e}") from e
    return out


def _unstarted_run(out: Path, entries: list[Path]) -> bool:
    """Whether ``out`` holds only what one of our runs leaves when it fails before its first record."""
    if any(p.name not in _UNSTARTED or p.is_symlink() or not p.is_file() for p in entries):
        return False
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "run_id" in manifest and manifest.get("status") != "completed"


async def _start(
    ns: argparse.Namespace, settings: Settings, scenarios: list[Scenario], in_flight: int, err: Console
) -> Launch:
    """Everything the user gave checked (the metrics address bound), then the run directory made."""
    first = scenarios[0]
    name = "+".join(sc.name for sc in scenarios)
    energy = energy_plan(ns, settings)
    metrics = _metrics(ns)
    out = _out_dir(ns, name, make=False)
    backend = create(ns.backend, backend_args(ns, settings, out, in_flight))  # its arguments checked
    if metrics is not None:
        try:
            await metrics.server.start(metrics.host, metrics.port)
        except OSError as e:
            raise ConfigError(f"--metrics-host/--metrics-port: {e}") from e
    try:
        _out_dir(ns, name, make=True, path=out)
        run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        manifest = build_manifest(run_id, first, ["infermeter", *sys.argv[1:]])
        if len(scenarios) > 1:
            manifest["tenants"] = [
                {
                    "name": sc.name,
                    "source": sc.source,
                    "sha256": sc.config_hash(),
                    "normalised": sc.normalised(),
                }
                for sc in scenarios
            ]
        write_json_atomic(out / "manifest.json", manifest)
    except BaseException:
        if metrics is not None:
            await metrics.server.close()
        raise
    return Launch(
        backend,
        out,
        manifest,
        run_id=run_id,
        err=err,
        progress=not ns.no_progress,
        metrics=metrics,
        energy=energy,
    )


def _seconds(value: str, flag: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from e
    if not seconds or seconds <= 0:
        raise ConfigError(f"{flag} must be a positive duration, got {value!r}")
    return seconds


def energy_plan(ns: argparse.Namespace, settings: Settings) -> EnergyPlan:
    """The energy meter from ``--energy``, ``--energy-interval`` and ``--energy-baseline``.

    Baseline ``auto`` takes the stored ``infermeter calibrate`` result for the same source and GPUs, else
    measures 10 s of idle power before the load; ``off`` measures power but attributes no energy.
    """
    interval = _seconds(getattr(ns, "energy_interval", "100ms"), "--energy-interval")
    try:
        source = open_source(getattr(ns, "energy", "auto"))
    except EnergyError as e:
        raise ConfigError(f"--energy: {e}") from e
    meter = EnergyMeter(source, interval_s=interval)
    choice = getattr(ns, "energy_baseline", "auto")
    if source.unavailable or choice == "off":
        return EnergyPlan(meter)
    if choice == "auto":
        meter.baseline = stored_baseline(settings, source.describe())
        return EnergyPlan(meter, None if meter.baseline else 10.0)
    return EnergyPlan(meter, _seconds(choice, "--energy-baseline"))


def _baseline_file(settings: Settings) -> Path:
    return settings.cache_dir / "energy-baseline.json"


def stored_baseline(settings: Settings, source: dict[str, Any]) -> Baseline | None:
    """The calibrated baseline when it was taken on the same source and GPUs."""
    path = _baseline_file(settings)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("source") != source:
        return None
    b = data.get("baseline", {})
    return Baseline(float(b["mean_w"]), float(b["sd_w"]), int(b["n"]), str(b.get("source", "")))


def cmd_calibrate(ns: argparse.Namespace, settings: Settings, err: Console) -> int:
    """``infermeter calibrate``: measure idle power and store it as the baseline for later runs."""
    seconds = _seconds(ns.seconds, "--seconds")
    plan = energy_plan(ns, settings)
    meter = plan.meter
    if meter.source.unavailable:
        err.print(f"energy: unavailable — {meter.source.unavailable}; nothing to calibrate")
        return EXIT_FAILED
    try:
        with err.status(f"measuring idle power for {seconds:g} s — keep the GPUs idle"):
            baseline = meter.calibrate(seconds)
    finally:
        meter.stop()
    path = _baseline_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": meter.source.describe(), "baseline": baseline.to_dict(), "taken_unix_s": time.time()}
    write_json_atomic(path, record)
    err.print(
        f"idle baseline {baseline.mean_w:.1f} W ± {baseline.sd_w:.1f} W over {baseline.n} samples → {path}"
    )
    return EXIT_OK


def _metrics(ns: argparse.Namespace) -> MetricsEndpoint | None:
    """The run's /metrics endpoint when ``--serve-metrics`` asks for one."""
    if not getattr(ns, "serve_metrics", False):
        return None
    linger = _duration(ns.metrics_linger, "--metrics-linger") or 0.0
    server = MetricsServer(RecordMetrics(version=__version__))
    return MetricsEndpoint(server, ns.metrics_host, ns.metrics_port, linger)


def _finish(launch: Launch, result: LaunchResult, summary: dict[str, Any] | None, err: Console) -> int:
    """Summary and manifest written, the outcome said in one line; the exit code.

    0 completed; 1 failed (records could not be written); 128 + n stopped by signal n.
    """
    outcome = result.outcome
    status = "interrupted" if outcome.interrupted else "completed"
    if result.write_error is not None:
        status = "failed"
        launch.manifest["error"] = str(result.write_error)
    launch.manifest.update(
        status=status,
        ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        records={"total": result.written, **outcome.by_status}
        if result.write_error is None
        else {"total": result.written, "lost_in_failed_write": max(0, outcome.total - result.written)},
        degraded_by_reason=dict(outcome.by_reason),
        clock={"origin_perf_counter_ns": result.origin_ns, "origin_unix_s": outcome.started_unix},
        durability={
            "backlog_max_records": outcome.backlog_max,
            "write_delay_ms_max": round(outcome.write_delay_ms_max, 3),
        },
    )
    if outcome.chains:
        launch.manifest["chains"] = dict(outcome.chains)
    if outcome.not_sent:
        launch.manifest["not_sent_at_end"] = outcome.not_sent
        err.print(
            f"[yellow]{outcome.not_sent} requests due before the end were not sent[/yellow] (no free worker)"
        )
    try:
        if summary is not None:
            summary["run_id"] = launch.run_id
            write_json_atomic(launch.out / "summary.json", summary)
        write_json_atomic(launch.out / "manifest.json", launch.manifest)
    except OSError as e:
        err.print(Text.assemble(("error: ", "bold red"), f"cannot write the run's manifest or summary: {e}"))
        return EXIT_FAILED
    if result.write_error is not None:
        err.print(Text.assemble(("error: ", "bold red"), str(result.write_error)), soft_wrap=True)
        err.print(f"run stopped: {result.written} whole records on disk in {launch.out}/ (manifest: failed)")
        return EXIT_FAILED
    err.print(f"records, manifest and summary in {launch.out}/")
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/yellow]: {result.written} records kept")
        return 128 + (result.signal or 2)
    return EXIT_OK


def _targets(scenarios: list[Scenario]) -> dict[str, dict[str, Any]]:
    return {sc.name: targets_for(sc.normalised()) for sc in scenarios}


async def cmd_run(ns: argparse.Namespace, settings: Settings, err: Console) -> int:
    """One stage; several scenarios run at once as labelled tenants of one backend."""
    scenarios = [scenario_for(name, ns) for name in ns.scenario]
    names = [sc.name for sc in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"each tenant needs its own scenario name; got {', '.join(names)}")
    launch = await _start(ns, settings, scenarios, sum(_in_flight(sc) for sc in scenarios), err)
    result = await launch.run([StagePlan(None, [Tenant(sc) for sc in scenarios])])
    summary = summarize(load_records(launch.out).records, _targets(scenarios), launch.out)
    Console().print(render_summary(summary))
    return _finish(launch, result, summary, err)


def _sweep_config(ns: argparse.Namespace, sc: Scenario) -> Scenario:
    try:
        values = [float(v) for v in ns.values.split(",")] if ns.values else None
    except ValueError as e:
        raise ConfigError(f"--values expects numbers separated by commas, got {ns.values!r}") from e
    if values is not None and not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--values must be positive numbers, got {ns.values!r}")
    sweep = {
        "over": ns.over,
        "values": values,
        "start": ns.start,
        "stop": ns.stop,
        "factor": ns.factor,
        "stage_requests": ns.stage_requests,
        "stage_duration": ns.stage_duration,
        "min_gain": ns.min_gain,
        "stop_at_saturation": False if ns.all_stages else None,
    }
    sweep = {k: v for k, v in sweep.items() if v is not None}
    if sc.sweep is None and not (values or (ns.start and ns.stop)):
        raise ConfigError("the scenario has no sweep block; give --values or --start and --stop")
    base = sc.sweep.model_dump() if sc.sweep is not None else {}
    if values is not None:
        base.update(start=None, stop=None)
    return sc.with_overrides(sweep={**base, **sweep})


def _stage_scenario(sc: Scenario, value: float) -> Scenario:
    assert sc.sweep is not None
    sw = sc.sweep
    bounds: dict[str, Any] = {}
    if sw.stage_requests or sw.stage_duration:
        bounds = {"requests": sw.stage_requests, "duration": sw.stage_duration}
        if sw.stage_duration and not sw.stage_requests:
            bounds["requests"] = None
    data = sc.normalised() | bounds
    if sw.over == "rate":
        arrival = data["load"]["arrival"]
        data["load"] = data["load"] | {
            "rate": value,
            "arrival": "poisson" if arrival == "closed" else arrival,
        }
    else:
        if value != int(value):
            raise ConfigError(f"concurrency must be a whole number, got {value:g}")
        data["concurrency"] = int(value)
        data["load"] = data["load"] | {"arrival": "closed"}
    return sc.derive(data, location=f"sweep stage {value:g}")


async def cmd_sweep(ns: argparse.Namespace, settings: Settings, err: Console) -> int:
    """Stages of rising load; stop at saturation; print the curve and the knee."""
    sc = _sweep_config(ns, scenario_for(ns.scenario, ns))
    assert sc.sweep is not None
    sw = sc.sweep
    plans: list[StagePlan] = []
    for i, value in enumerate(sw.stage_values()):
        stage_sc = _stage_scenario(sc, value)
        if i:
            stage_sc = stage_sc.with_overrides(warmup=0) if stage_sc.warmup else stage_sc
        plans.append(StagePlan(f"{sw.over}={value:g}", [Tenant(stage_sc)], value))
    in_flight = max(_in_flight(p.tenants[0].scenario) for p in plans)
    launch = await _start(ns, settings, [sc], in_flight, err)
    launch.manifest["sweep"] = sw.model_dump(mode="json")
    slo = sc.slo.model_dump()
    points: list[dict[str, Any]] = []
    targets = _targets([sc])

    def after(plan: StagePlan, records: list[RequestRecord]) -> str | None:
        stats = summarize_stages(records, targets).get(plan.label or "")
        if stats is None:
            return "the stage wrote no records"
        points.append(point(plan.label or "", plan.value or 0.0, stats, sc.slo.percentile))
        why = saturation(points, slo, sw.min_gain)
        return why if sw.stop_at_saturation else None

    result = await launch.run(plans, after_stage=after)
    curve = analyse(points, slo, sw.min_gain)
    summary = {
        "schema_version": 1,
        "sweep": curve,
        "stages": summarize_stages(load_records(launch.out).records, targets),
    }
    Console().print(_curve_table(curve, sw.over, sc.slo.percentile))
    return _finish(launch, result, summary, err)


def _curve_table(curve: dict[str, Any], over: str, percentile: float) -> Table:
    table = Table(title="throughput / latency by stage", box=None)
    for col in (
        over,
        "throughput",
        "req/s",
        "TTFT p50",
        f"TTFT p{percentile:g}",
        "TPOT p50",
        f"E2E p{percentile:g}",
        "goodput",
        "lag p99",
    ):
        table.add_column(col, justify="right")
    knee = (curve.get("knee") or {}).get("stage")
    for p in curve["points"]:
        mark = " ◀ knee" if p["stage"] == knee else ""
        table.add_row(
            f"{p['load']:g}{mark}",
            f"{fmt(p['throughput'])} {p['throughput_unit']}",
            fmt(p["requests_per_s"], "{:.2f}"),
            fmt(p["ttft_ms_p50"]),
            fmt(p["ttft_ms_pslo"]),
            fmt(p["tpot_ms_p50"]),
            fmt(p["e2e_ms_pslo"]),
            fmt(p["goodput_share"] * 100 if p["goodput_share"] is not None else None, "{:.0f} %"),
            fmt(p["lag_ms_p99"], "{:.2f}"),
        )
    sat = curve.get("saturated")
    caption = (
        f"knee at {over} {curve['knee']['load']:g}" if curve.get("knee") else "no knee: first stage saturated"
    )
    caption += (
        f"; saturated at {sat['stage']}: {sat['why']}" if sat else "; not saturated within the stages run"
    )
    table.caption = caption
    return table


async def cmd_replay(ns: argparse.Namespace, settings: Settings, err: Console) -> int:
    """Replay a trace's requests at its own pace (times ``--speed``)."""
    items = load_trace(ns.trace, ns.format, ns.limit)
    base = scenario_for(ns.scenario, ns)
    if not ns.speed > 0:
        raise ConfigError("--speed must be positive")
    # the trace bounds the run (its length, on its clock), and its prompt lengths are the whole prompt
    replace = {"name": f"replay-{base.name}", "requests": len(items), "duration": None, "system": None}
    sc = base.derive(base.normalised() | replace, location=f"replay of {ns.trace}")
    offsets = [it.timestamp / ns.speed for it in items]
    launch = await _start(
        ns, settings, [sc], MAX_IN_FLIGHT, err
    )  # the trace's clock decides what is in flight
    launch.manifest["trace"] = {
        "path": str(ns.trace),
        "sha256": hashlib.sha256(ns.trace.read_bytes()).hexdigest(),
        "format": ns.format,
        "requests": len(items),
        "span_s": items[-1].timestamp - items[0].timestamp,
        "speed": ns.speed,
    }
    corpus = "\n\n".join(p.text for p in base.prompt_list())

    async def prepare(backend: Backend) -> list[StagePlan]:
        codec: TokenCodec | None = backend if callable(getattr(backend, "tokenize", None)) else None  # type: ignore[assignment]
        synth = PromptSynth(corpus, codec)
        await synth.prepare()
        launch.manifest["trace"]["prompt_lengths"] = "backend tokenizer" if synth.exact else "estimated"
        requests = await trace_requests(items, sc, synth)
        return [StagePlan(None, [Tenant(sc, requests=requests, offsets=offsets)])]

    result = await launch.run([], prepare=prepare)
    targets = _targets([sc])
    targets[sc.name]["load"]["arrival"] = "trace"
    summary = summarize(load_records(launch.out).records, targets, launch.out)
    Console().print(render_summary(summary))
    return _finish(launch, result, summary, err)


def cmd_import_trace(ns: argparse.Namespace, err: Console) -> int:
    """Convert a trace to our JSONL format."""
    items = load_trace(ns.source, ns.format)
    write_trace(items, ns.output)
    err.print(f"{len(items)} requests over {items[-1].timestamp:.1f} s written to {ns.output}")
    return EXIT_OK
