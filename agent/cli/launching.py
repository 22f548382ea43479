"""From flags to a started run, and the files that close it.

Scenarios with overrides, backend arguments, the run directory, the energy plan and the /metrics endpoint
on the way in; the summary, the manifest and the one-line outcome on the way out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.text import Text

from agent import __version__
from agent.backends import create
from agent.backends.base import CliContext, args_type
from agent.cli.common import EXIT_FAILED, EXIT_OK, duration, kv, seconds
from agent.cli.settings import Settings
from agent.core.errors import ConfigError
from agent.core.files import HEADROOM_NAME, Headroom, release_headroom, write_atomic
from agent.core.manifest import Clock, Durability, Manifest, ManifestFile, RecordCounts, write_json_atomic
from agent.core.overrides import overrides_of
from agent.core.redact import is_secret_key, remember
from agent.core.rundir import RunDir
from agent.core.scenario import MAX_IN_FLIGHT, Scenario, Targets, load_scenario, resolve_scenario
from agent.energy.base import Baseline, EnergyError
from agent.energy.meter import EnergyMeter
from agent.energy.sources import open_source
from agent.run.cluster import RayCluster
from agent.run.collaborators import EnergyPlan, EnergyWatch, Gauges, MetricsEndpoint, RunProgress, StopSignals
from agent.run.launch import Launch, LaunchResult
from agent.run.manifest import build_manifest
from agent.run.runner import in_flight
from agent.run.serverside import ServerPlan, ServerSide
from agent.run.workers import WorkerPlan
from analysis.columns import RecordColumns
from analysis.results import RunSummary, SweepSummary
from exporters.http import MetricsServer
from exporters.prometheus import RecordMetrics

__all__ = [
    "backend_args",
    "baseline_file",
    "energy_plan",
    "finish",
    "in_flight",
    "scenario_for",
    "start",
    "targets",
    "write_html",
]


def backend_args(
    ns: argparse.Namespace, settings: Settings, out: Path, in_flight: int, *, cache_prompt: bool = False
) -> dict[str, Any]:
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
        cache_prompt=cache_prompt,
    )
    args = {**args_type(ns.backend).from_cli(ctx), **kv(ns.backend_arg, "--backend-arg")}
    for key, value in args.items():
        if is_secret_key(key):
            remember(value)
    return args


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The scenario overrides given on the command line, nested as the scenario holds them."""
    given = vars(ns)  # replay has only some of the flags
    out: dict[str, Any] = {}
    for o in overrides_of(Scenario):
        value = given.get(o.flag.dest)
        if value is None:
            continue
        if o.is_duration:
            value = duration(value, o.flag.name)
        block = out
        for key in o.path[:-1]:
            block = block.setdefault(key, {})
        block[o.path[-1]] = value
    load = out.get("load", {})
    if "rate" in load and "arrival" not in load:
        load["arrival"] = "poisson"  # a rate alone means open loop; Poisson is the usual default
    return out


def _no_conflicts(ns: argparse.Namespace, arrival: str) -> None:
    """Load flags that contradict the load the run will have are refused, never silently ignored."""

    def given(*flags: str) -> list[str]:
        return [f"--{f.replace('_', '-')}" for f in flags if getattr(ns, f, None) is not None]

    if arrival == "closed" and (flags := given("rate", "burstiness", "max_concurrency")):
        raise ConfigError(
            f"{', '.join(flags)} {'shapes' if len(flags) == 1 else 'shape'} an open loop, but this run is a "
            "closed loop (its load is "
            "--concurrency clients); drop the flag, or give --arrival constant|poisson|gamma"
        )
    if arrival != "closed" and given("think_time"):
        raise ConfigError(
            f"--think-time is a closed loop's pause between a client's requests; this run's arrivals are "
            f"{arrival} at a rate, so it would not apply"
        )
    if arrival not in ("closed", "gamma") and given("burstiness"):
        raise ConfigError(f"--burstiness shapes gamma arrivals only; add --arrival gamma (not {arrival})")


def scenario_for(name: str, ns: argparse.Namespace) -> Scenario:
    """A scenario by name or path with the command-line overrides applied.

    ``--duration`` alone makes the run time-bound (the scenario's request count no longer applies), and
    ``--requests`` alone makes it count-bound. Workload flags replace the scenario's prompts (or change
    its workload), and a dataset they name is read here, before any run directory exists.
    """
    sc = load_scenario(resolve_scenario(name)).with_overrides(**_overrides(ns))
    _no_conflicts(ns, sc.load.arrival)
    data = sc.normalised()
    changed = _workload_overrides(ns, data)
    requests, duration = getattr(ns, "requests", None), getattr(ns, "duration", None)
    if (requests is None) != (duration is None):
        data[("requests" if requests is None else "duration")] = None
        changed = True
    if changed:
        sc = sc.derive(data, location="command line")
        sc.load_data(Path.cwd())
    return sc


#: Flags that set one field of whatever workload the run has: destination → (flag, workload field).
_WORKLOAD_FIELDS = {
    "workload_output": ("--output-tokens", "output_tokens"),
    "workload_seed": ("--workload-seed", "seed"),
    "length_of": ("--length-of", "length_of"),
    "suffix_tokens": ("--suffix-tokens", "suffix_tokens"),
    "prompts_per_group": ("--prompts-per-group", "prompts_per_group"),
    "sample": ("--sample", "sample"),
    "turns": ("--turns", "turns"),
    "answers": ("--answers", "answers"),
    "dataset_format": ("--dataset-format", "format"),
}


def _new_workload(ns: argparse.Namespace) -> dict[str, Any] | None:
    """The workload a flag chooses: synthetic lengths, shared prefixes or a dataset (at most one)."""

    def get(name: str) -> Any:
        return getattr(ns, name, None)

    chosen: dict[str, dict[str, Any]] = {}
    if get("input_tokens") is not None:
        chosen["--input-tokens"] = {"kind": "synthetic", "input_tokens": ns.input_tokens}
    if get("prefix_groups") is not None or get("prefix_tokens") is not None:
        if get("prefix_groups") is None or get("prefix_tokens") is None:
            raise ConfigError("a shared-prefix workload needs both --prefix-groups and --prefix-tokens")
        chosen["--prefix-groups"] = {
            "kind": "shared_prefix",
            "groups": ns.prefix_groups,
            "prefix_tokens": ns.prefix_tokens,
        }
    if get("dataset") is not None:
        chosen["--dataset"] = {"kind": "dataset", "path": str(ns.dataset.expanduser().absolute())}
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} each choose a workload; give one of them")
    return next(iter(chosen.values()), None)


def _workload_overrides(ns: argparse.Namespace, data: dict[str, Any]) -> bool:
    """Lay the workload and request flags over a scenario's normalised ``data``; True if any applied."""
    new = _new_workload(ns)
    given = [dest for dest in _WORKLOAD_FIELDS if getattr(ns, dest, None) is not None]
    fields = {_WORKLOAD_FIELDS[dest][1]: getattr(ns, dest) for dest in given}
    if getattr(ns, "tokenizer", None) is not None:
        fields["tokenizer"] = str(ns.tokenizer.expanduser().absolute())
    if getattr(ns, "column", None):
        fields["columns"] = {k: str(v) for k, v in kv(ns.column, "--column").items()}
    changed = False
    if new is not None:
        data.pop("prompts", None)
        old = data.get("workload") or {}
        if old.get("kind") == new["kind"]:  # the scenario's own workload, with the flags over it
            new = {**old, **new}
        elif new["kind"] == "shared_prefix":
            new["suffix_tokens"] = "32"
        data["workload"] = new
        changed = True
    if fields:
        if data.get("workload") is None:
            flags = ", ".join(_WORKLOAD_FIELDS[dest][0] for dest in given)
            raise ConfigError(
                f"{flags or '--tokenizer/--column'} shape a workload, and this scenario has a prompt "
                "list; add --input-tokens, --prefix-groups with --prefix-tokens, or --dataset"
            )
        data["workload"] = {**data["workload"], **fields}
        changed = True
    headers = {k: str(v) for k, v in kv(getattr(ns, "header", []), "--header").items()}
    body = kv(getattr(ns, "extra_body", []), "--extra-body")
    if headers or body:
        old = data.get("request") or {"body": {}, "headers": {}}
        data["request"] = {"body": {**old["body"], **body}, "headers": {**old["headers"], **headers}}
        changed = True
    return _request_overrides(ns, data) or changed


def _request_overrides(ns: argparse.Namespace, data: dict[str, Any]) -> bool:
    """``--endpoint``, ``--no-stream`` and ``--model-weight`` laid over ``data``; True if any applied."""
    changed = False
    if getattr(ns, "endpoint", None) is not None:
        data["endpoint"] = ns.endpoint
        changed = True
    if getattr(ns, "no_stream", False):
        data["stream"] = False
        changed = True
    if getattr(ns, "model_weight", None):
        data["models"] = kv(ns.model_weight, "--model-weight")
        changed = True
    return changed


#: What a run directory that never got to its first record may hold; such a directory can be reused.
_UNSTARTED = frozenset({RunDir.manifest, RunDir.engine_log, RunDir.simulator_log, HEADROOM_NAME})


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
            held = "already holds a run" if RunDir(out).records.exists() else "is not empty"
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
        manifest = Manifest.read(RunDir(out).manifest)
    except (OSError, ValueError):
        return False
    return manifest is not None and manifest.run_id is not None and not manifest.completed


async def start(
    ns: argparse.Namespace,
    settings: Settings,
    scenarios: list[Scenario],
    in_flight: int,
    err: Console,
    *,
    workers: int = 1,
    cluster: RayCluster | None = None,
) -> Launch:
    """Everything the user gave checked (the metrics address bound), then the run directory made.

    With ``workers`` above one the load is split across that many processes, each a client of the
    backend this process starts (so the backend must be one driven by URL).
    """
    name = "+".join(sc.name for sc in scenarios)
    energy = energy_plan(ns, settings)
    server = server_plan(ns)
    metrics = _metrics(ns)
    out = _out_dir(ns, name, make=False)
    cache = any(sc.cache_prompt for sc in scenarios)
    args = backend_args(ns, settings, out, in_flight, cache_prompt=cache)
    backend = create(ns.backend, args)  # checked
    plan = worker_plan(ns.backend, args, workers, cluster)
    if metrics is not None:
        try:
            await metrics.server.start(metrics.host, metrics.port)
        except OSError as e:
            raise ConfigError(f"--metrics-host/--metrics-port: {e}") from e
    try:
        _out_dir(ns, name, make=True, path=out)
        Headroom.claim(out)  # so a disk that fills up still lets the run say how it ended
        run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        manifest = ManifestFile(
            RunDir(out).manifest, build_manifest(run_id, scenarios, ["infermeter", *sys.argv[1:]])
        )
        if cluster is not None:
            manifest.manifest.cluster = cluster.describe()
        manifest.save()
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
        progress=RunProgress(err, enabled=not ns.no_progress),
        signals=StopSignals(),
        gauges=Gauges(metrics, backend, err) if metrics is not None else None,
        energy=EnergyWatch(energy, err),
        server=ServerSide(server, backend, out, err),
        workers=plan,
    )


def worker_plan(
    backend: str, args: dict[str, Any], workers: int, cluster: RayCluster | None
) -> WorkerPlan | None:
    """How the load is spread (None: this process runs it); a backend that cannot be spread refused."""
    if workers <= 1 and cluster is None:
        return None
    if "base_url" not in args_type(backend).model_fields:
        flag = "--ray" if cluster is not None else f"--workers {workers}"
        raise ConfigError(
            f"{flag}: backend '{backend}' runs in this process; worker processes drive "
            "a backend by its URL (sim, openai, ollama)"
        )
    return WorkerPlan(workers, backend, args, ray=cluster)


def server_plan(ns: argparse.Namespace) -> ServerPlan:
    """``--server-metrics``, ``--server-metrics-interval`` and ``--prefix-cache``, checked."""
    given = [u.strip() for u in getattr(ns, "server_metrics", []) or [] if u.strip()]
    urls = [u for u in given if u not in ("auto", "off")]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"--server-metrics {url!r}: give an http(s) URL of a metrics endpoint, auto or off"
            )
    if "off" in given and len(given) > 1:
        raise ConfigError("--server-metrics off cannot be given with other endpoints")
    interval = seconds(getattr(ns, "server_metrics_interval", "1s"), "--server-metrics-interval")
    if interval < 0.1:
        raise ConfigError("--server-metrics-interval: at least 100ms (each scrape reads the whole endpoint)")
    return ServerPlan(
        endpoints=urls,
        discover="off" not in given and (not urls or "auto" in given),
        interval_s=interval,
        reset_prefix_cache=getattr(ns, "prefix_cache", "reset") == "reset",
    )


def energy_plan(ns: argparse.Namespace, settings: Settings) -> EnergyPlan:
    """The energy meter from ``--energy``, ``--energy-interval`` and ``--energy-baseline``.

    Baseline ``auto`` takes the stored ``infermeter calibrate`` result for the same source and GPUs, else
    measures 10 s of idle power before the load; ``off`` measures power but attributes no energy.
    """
    interval = seconds(getattr(ns, "energy_interval", "100ms"), "--energy-interval")
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
    return EnergyPlan(meter, seconds(choice, "--energy-baseline"))


def baseline_file(settings: Settings) -> Path:
    """Where ``infermeter calibrate`` keeps the idle baseline."""
    return settings.cache_dir / "energy-baseline.json"


def stored_baseline(settings: Settings, source: dict[str, Any]) -> Baseline | None:
    """The calibrated baseline when it was taken on the same source and GPUs."""
    path = baseline_file(settings)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data.get("source"), dict) or _identity(data["source"]) != _identity(source):
        return None
    b = data.get("baseline", {})
    return Baseline(float(b["mean_w"]), float(b["sd_w"]), int(b["n"]), str(b.get("source", "")))


def _identity(source: dict[str, Any]) -> dict[str, Any]:
    """What makes two power sources the same GPUs (a remote one's scrape figures change every read)."""
    return {k: source.get(k) for k in ("source", "available", "gpus", "url", "trace", "energy_counter")}


def _metrics(ns: argparse.Namespace) -> MetricsEndpoint | None:
    """The run's /metrics endpoint when ``--serve-metrics`` asks for one."""
    if not getattr(ns, "serve_metrics", False):
        return None
    linger = duration(ns.metrics_linger, "--metrics-linger") or 0.0
    server = MetricsServer(RecordMetrics(version=__version__))
    return MetricsEndpoint(server, ns.metrics_host, ns.metrics_port, linger)


def finish(
    launch: Launch,
    result: LaunchResult,
    summary: RunSummary | SweepSummary | None,
    err: Console,
    cols: RecordColumns | None = None,
) -> int:
    """Summary and manifest written, the outcome said in one line; the exit code.

    0 completed; 1 failed (records could not be written); 128 + n stopped by signal n. A stop signal
    while this runs is noted, never a KeyboardInterrupt half-way through the files. ``cols``, the
    records' columns the summary was made from, draw the page too (read again when not given).
    """
    try:
        return _finish(launch, result, summary, err, cols)
    finally:
        launch.release_signals()


def _finish(
    launch: Launch,
    result: LaunchResult,
    summary: RunSummary | SweepSummary | None,
    err: Console,
    cols: RecordColumns | None,
) -> int:
    outcome, m = result.outcome, launch.manifest
    m.status = "interrupted" if outcome.interrupted else "completed"
    if result.write_error is not None:
        m.status, m.error = "failed", str(result.write_error)
    elif launch.worker_died:
        died = [str(w["index"]) for w in m.workers or [] if w.get("status") == "died"]
        m.status, m.error = "failed", f"worker process {', '.join(died)} died; its records are kept"
    m.ended_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    m.records = (
        RecordCounts(total=result.written, **outcome.by_status)
        if result.write_error is None
        else RecordCounts(total=result.written, lost_in_failed_write=max(0, outcome.total - result.written))
    )
    m.degraded_by_reason = dict(outcome.by_reason)
    m.clock = Clock(origin_perf_counter_ns=result.origin_ns, origin_unix_s=outcome.started_unix)
    m.durability = Durability(
        backlog_max_records=outcome.backlog_max, write_delay_ms_max=round(outcome.write_delay_ms_max, 3)
    )
    if outcome.chains:
        m.chains = dict(outcome.chains)
    if outcome.not_sent:
        m.not_sent_at_end = outcome.not_sent
        err.print(
            f"[yellow]{outcome.not_sent} requests due before the end were not sent[/yellow] (no free worker)"
        )
    try:
        if summary is not None:
            summary.run_id = launch.run_id
            write_json_atomic(RunDir(launch.out).summary, summary.dump())
        launch.manifest_file.save()
    except OSError as e:
        err.print(Text.assemble(("error: ", "bold red"), f"cannot write the run's manifest or summary: {e}"))
        return EXIT_FAILED
    finally:
        release_headroom(launch.out)
    if result.write_error is not None:
        err.print(Text.assemble(("error: ", "bold red"), str(result.write_error)), soft_wrap=True)
        err.print(f"run stopped: {result.written} whole records on disk in {launch.out}/ (manifest: failed)")
        return EXIT_FAILED
    write_html(launch.out, err, cols)
    err.print(f"records, manifest, summary and report.html in {launch.out}/")
    if launch.worker_died:
        err.print(f"[red]failed[/red]: {m.error}")
        return EXIT_FAILED
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/yellow]: {result.written} records kept")
        return 128 + (result.signal or 2)
    return EXIT_OK


def write_html(run_dir: Path, err: Console, cols: RecordColumns | None = None) -> None:
    """``report.html`` of a finished run; a page that cannot be written is a warning, never a failed run."""
    from analysis.render.html import run_html

    try:
        write_atomic(RunDir(run_dir).report, run_html(run_dir, cols=cols))
    except (OSError, ValueError) as e:
        err.print(Text.assemble(("warning: ", "yellow"), f"report.html not written: {e}"), soft_wrap=True)


def targets(scenarios: list[Scenario], *, trace: bool = False) -> dict[str, Targets]:
    """Each scenario's targets (load, objectives) by name, for the summary; a replay's are a trace's."""
    return {sc.name: Targets.of(sc.normalised(), trace=trace) for sc in scenarios}
