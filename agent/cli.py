"""``infermeter`` command line: the one place that wires scenarios, backends, runner, sinks and reports."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agent import __version__
from agent.backends import available, create
from agent.errors import ConfigError, InfermeterError
from agent.manifest import build_manifest, write_json_atomic
from agent.record import RequestRecord
from agent.runner import Runner
from agent.scenario import Scenario, list_builtin, load_scenario, resolve_scenario
from agent.settings import Settings
from analysis.console import render_summary
from analysis.records import load_records
from analysis.summary import summarize
from exporters.jsonl import JsonlWriter

__all__ = ["main"]

logger = structlog.get_logger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: llama.cpp slots cost KV-cache memory; beyond this the engine queues, which the records will show.
MAX_ENGINE_SLOTS = 32


def _configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.WARNING)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def _error(err: Console, message: object) -> None:
    """One unwrapped line, no markup interpretation: paths and brackets print as they are."""
    err.print(Text.assemble(("error: ", "bold red"), str(message)), soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infermeter", description="Load-test and measure LLM inference.")
    p.add_argument("--version", action="version", version=f"infermeter {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("scenarios", help="list the built-in scenarios")

    run = sub.add_parser("run", help="run a scenario against a backend and summarise it")
    run.add_argument("scenario", help="built-in scenario name (see `infermeter scenarios`) or a YAML path")
    run.add_argument("--backend", default="embedded", help=f"one of: {', '.join(available())}")
    run.add_argument("--requests", type=int, help="steady-state requests (overrides the scenario)")
    run.add_argument("--duration", help="stop issuing requests after this long, e.g. 30s, 2m")
    run.add_argument("--concurrency", type=int, help="closed-loop concurrency")
    run.add_argument("--warmup", type=int, help="warmup requests, recorded apart")
    run.add_argument("--max-tokens", type=int, dest="output_tokens", help="output tokens per request")
    run.add_argument("--out", type=Path, help="run directory (default runs/<scenario>-<time>)")
    run.add_argument("--base-url", help="server URL for HTTP backends (openai, ollama, sim)")
    run.add_argument("--model", help="model id (HTTP backends) or path / HF id (transformers)")
    run.add_argument("--model-path", type=Path, help="GGUF file for the embedded engine")
    run.add_argument(
        "--backend-arg", action="append", default=[], metavar="KEY=VALUE", help="any backend argument"
    )
    run.add_argument(
        "--compile",
        nargs="?",
        const="all",
        choices=["prefill", "all"],
        help="transformers: torch.compile the prefill pass or everything (evidence goes to the manifest)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    sim = sub.add_parser("sim-server", help="serve the simulator (OpenAI SSE + Ollama NDJSON) on loopback")
    sim.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--ttft-ms", help="TTFT: a number or kind:mean[:sd], e.g. lognormal:100:20")
    sim.add_argument("--itl-ms", help="gap between tokens: a number or kind:mean[:sd]")
    sim.add_argument("--output-tokens", help="tokens per answer (default: the request's max_tokens)")
    sim.add_argument("--emission-log", type=Path, help="JSONL with every chunk's send time (ground truth)")
    sim.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any simulator model field"
    )

    summ = sub.add_parser("summarize", help="summarise a run directory")
    summ.add_argument("run_dir", type=Path)
    summ.add_argument("--json", action="store_true", help="print summary JSON instead of the table")
    return p


def _cmd_scenarios(console: Console) -> int:
    table = Table("name", "requests", "conc.", "prompt tok", "output tok", "description", box=None)
    for path in list_builtin():
        try:
            sc = load_scenario(path)
        except ConfigError as e:
            table.add_row(path.stem, "", "", "", "", f"[red]invalid: {e}[/red]")
            continue
        table.add_row(
            sc.name,
            str(sc.requests or f"{sc.duration:g}s"),
            str(sc.concurrency),
            str(sc.prompt_tokens or "—"),
            str(sc.output_tokens),
            sc.description,
        )
    console.print(table)
    return EXIT_OK


def _kv(items: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _backend_args(ns: argparse.Namespace, sc: Scenario, settings: Settings, out: Path) -> dict[str, Any]:
    args: dict[str, Any] = {"max_connections": max(64, sc.concurrency)}
    if ns.backend == "embedded":
        args.update(
            cache_dir=settings.cache_dir,
            n_parallel=min(sc.concurrency, MAX_ENGINE_SLOTS),
            log_path=out / "engine.log",
        )
        if ns.model_path is not None:
            args["model_path"] = ns.model_path
    elif ns.backend == "openai":
        args.update(
            base_url=ns.base_url or settings.openai.base_url,
            model=ns.model or settings.openai.model,
            api_key=settings.openai.api_key,
        )
    elif ns.backend in ("ollama", "sim"):
        args.update({k: v for k, v in (("base_url", ns.base_url), ("model", ns.model)) if v is not None})
        if ns.backend == "sim":
            args.pop("model", None)
            args["log_path"] = out / "simulator.log"
    elif ns.backend == "transformers":
        args.pop("max_connections")
        if ns.model is not None:
            args["model"] = ns.model
        if ns.compile is not None:
            args["compile"] = ns.compile
    args.update(_kv(ns.backend_arg, "--backend-arg"))
    return args


def _load_for_run(ns: argparse.Namespace) -> Scenario:
    sc = load_scenario(resolve_scenario(ns.scenario))
    return sc.with_overrides(
        requests=ns.requests,
        duration=ns.duration,
        concurrency=ns.concurrency,
        warmup=ns.warmup,
        output_tokens=ns.output_tokens,
    )


def _out_dir(ns: argparse.Namespace, sc: Scenario) -> Path:
    out: Path = ns.out or Path("runs") / f"{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "records.jsonl").exists():
        raise ConfigError(f"{out} already holds a run; choose another --out (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  degraded {task.fields[degraded]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


async def _run(ns: argparse.Namespace, sc: Scenario, out: Path, settings: Settings, err: Console) -> int:
    run_id = f"{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    manifest = build_manifest(run_id, sc, ["infermeter", *sys.argv[1:]])
    manifest_path = out / "manifest.json"
    write_json_atomic(manifest_path, manifest)
    backend = create(ns.backend, _backend_args(ns, sc, settings, out))

    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    try:
        with err.status(f"starting backend '{ns.backend}'"):
            await backend.start()
    except InfermeterError as e:
        await backend.close()
        manifest.update(status="failed", error=str(e), ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_json_atomic(manifest_path, manifest)
        _error(err, e)
        return EXIT_FAILED
    manifest["backend"] = backend.describe()
    write_json_atomic(manifest_path, manifest)

    total = sc.warmup + sc.requests if sc.requests is not None else None
    progress = _progress(err, enabled=not ns.no_progress)
    counts = {"ok": 0, "degraded": 0}
    with progress, JsonlWriter(out / "records.jsonl") as writer:
        task = progress.add_task(sc.name, total=total, ok=0, degraded=0)

        def tick(record: RequestRecord) -> None:
            counts[record.status] += 1
            progress.update(task, advance=1, ok=counts["ok"], degraded=counts["degraded"])

        runner = Runner(sc, backend, writer, run_id=run_id, on_record=tick)
        try:
            outcome = await runner.run(stop)
            manifest["backend"] = backend.describe()  # again: counters such as compile evidence grew
        finally:
            await backend.close()
    manifest["clock"] = {"origin_perf_counter_ns": runner.start_ns, "origin_unix_s": outcome.started_unix}

    loaded = load_records(out)
    summary = summarize(
        loaded.records, {sc.name: {"prompt_tokens": sc.prompt_tokens, "output_tokens": sc.output_tokens}}
    )
    summary["run_id"] = run_id
    write_json_atomic(out / "summary.json", summary)
    manifest.update(
        status="interrupted" if outcome.interrupted else "completed",
        ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        records={"total": outcome.total, **outcome.by_status},
        degraded_by_reason=dict(outcome.by_reason),
    )
    write_json_atomic(manifest_path, manifest)
    Console().print(render_summary(summary))
    err.print(f"records, manifest and summary in {out}/")
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/yellow]: {outcome.total} records kept")
        return 128 + (received[0] if received else signal.SIGINT)
    return EXIT_OK


def _cmd_summarize(ns: argparse.Namespace, err: Console) -> int:
    loaded = load_records(ns.run_dir)
    for warning in loaded.warnings:
        err.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    targets: dict[str, dict[str, Any]] = {}
    manifest_path = ns.run_dir / "manifest.json"
    if manifest_path.is_file():
        sc = json.loads(manifest_path.read_text(encoding="utf-8"))["scenario"]
        norm = sc.get("normalised", {})
        targets[sc["name"]] = {k: norm.get(k) for k in ("prompt_tokens", "output_tokens")}
    summary = summarize(loaded.records, targets)
    if ns.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        Console().print(render_summary(summary))
    return EXIT_OK


async def _sim_server(ns: argparse.Namespace, err: Console) -> int:
    from agent.backends._sim_server import serve
    from agent.backends.sim import parse_model

    values = _kv(ns.set, "--set")
    for key in ("ttft_ms", "itl_ms", "output_tokens"):
        if getattr(ns, key) is not None:
            values[key] = getattr(ns, key)
    model = parse_model(values)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def announce(address: str) -> None:
        sys.stdout.write(address + "\n")
        sys.stdout.flush()
        err.print(f"simulator '{model.model_name}' on {address} (OpenAI /v1/*, Ollama /api/*); Ctrl-C stops")

    log = str(ns.emission_log) if ns.emission_log else None
    await serve(model, host=ns.host, port=ns.port, emission_log=log, stop=stop, announce=announce)
    return EXIT_OK


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``infermeter`` console script."""
    ns = _parser().parse_args(argv)
    settings = Settings()
    _configure_logging(settings)
    err = Console(stderr=True)
    try:
        if ns.command == "scenarios":
            return _cmd_scenarios(Console())
        if ns.command == "summarize":
            return _cmd_summarize(ns, err)
        if ns.command == "sim-server":
            return _run_loop(_sim_server(ns, err))
        sc = _load_for_run(ns)
        out = _out_dir(ns, sc)
        return _run_loop(_run(ns, sc, out, settings, err))
    except ConfigError as e:
        _error(err, e)
        return EXIT_CONFIG
    except (InfermeterError, FileNotFoundError) as e:
        _error(err, e)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
