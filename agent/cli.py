"""``infermeter`` command line: the one place that wires scenarios, backends, runner, sinks and reports."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Mapping, MutableMapping
from pathlib import Path
from typing import Any, NoReturn

import structlog
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent import __version__
from agent.analyze import add_parser as add_analyze_parser
from agent.analyze import cmd_analyze
from agent.backends import available
from agent.commands import (
    EXIT_FAILED,
    EXIT_OK,
    cmd_calibrate,
    cmd_import_trace,
    cmd_replay,
    cmd_run,
    cmd_sweep,
    kv,
)
from agent.errors import ConfigError, InfermeterError
from agent.launch import targets_for
from agent.redact import redact, redact_obj, remember
from agent.scenario import list_builtin, load_scenario
from agent.settings import Settings
from analysis.console import render_summary
from analysis.records import load_records
from analysis.summary import summarize

__all__ = ["main"]

logger = structlog.get_logger(__name__)

EXIT_CONFIG = 2


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Mask secrets in every log event before it is rendered."""
    return {k: redact_obj(v) if isinstance(v, str | dict | list | tuple) else v for k, v in event.items()}


def _configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.WARNING)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            _redact_event,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]  # file-like
    )


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is when a line is logged, not the one there at configuration.

    A redirect (or a test's capture) can replace and close the stream the logger was configured with;
    log lines then still go where standard error goes now instead of failing on a closed file.
    """

    def write(self, text: str) -> int:
        """Write ``text`` to the current standard error."""
        return sys.stderr.write(text)

    def flush(self) -> None:
        """Flush the current standard error."""
        sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: …`` and exit 2, the way every other bad input ends."""

    def error(self, message: str) -> NoReturn:
        """Say what is wrong in one line (``--help`` shows the usage) and exit 2."""
        self.exit(EXIT_CONFIG, f"error: {self.prog}: {message} (see --help)\n")


def _port(value: str) -> int:
    """A TCP port, 0 to 65535 (0 lets the system pick)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def _error(err: Console, message: object) -> None:
    """One unwrapped line, no markup interpretation: paths and brackets print as they are."""
    err.print(Text.assemble(("error: ", "bold red"), redact(str(message))), soft_wrap=True)


def _energy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--energy", default="auto", help="power source: auto (NVML if present), nvml, off, replay:TRACE.csv"
    )
    p.add_argument("--energy-interval", default="100ms", help="power poll period (default 100ms)")
    p.add_argument(
        "--energy-baseline",
        default="auto",
        help="idle baseline: auto (stored `calibrate` result, else 10 s before the load), off, or a duration",
    )


def _backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="embedded", help=f"one of: {', '.join(available())}")
    p.add_argument("--base-url", help="server URL for HTTP backends (openai, ollama, sim)")
    p.add_argument("--model", help="model id (HTTP backends) or path / HF id (transformers)")
    p.add_argument("--model-path", type=Path, help="GGUF file for the embedded engine")
    p.add_argument(
        "--backend-arg", action="append", default=[], metavar="KEY=VALUE", help="any backend argument"
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="all",
        choices=["prefill", "all"],
        help="transformers: torch.compile the prefill pass or everything (evidence goes to the manifest)",
    )
    p.add_argument("--out", type=Path, help="run directory (default runs/<scenario>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _energy_flags(p)
    p.add_argument(
        "--serve-metrics", action="store_true", help="expose Prometheus /metrics while the run lasts"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)")
    p.add_argument(
        "--metrics-port", type=_port, default=9464, help="port for /metrics (default 9464; 0 = any)"
    )
    p.add_argument(
        "--metrics-linger",
        default="0s",
        help="keep serving /metrics this long after the run ends, e.g. 30s (one last scrape)",
    )


def _load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, help="steady-state requests (overrides the scenario)")
    p.add_argument("--duration", help="stop issuing requests after this long, e.g. 30s, 2m")
    p.add_argument("--concurrency", type=int, help="closed-loop clients (agents for agent chains)")
    p.add_argument("--warmup", type=int, help="warmup requests, recorded apart")
    p.add_argument("--cooldown", type=int, help="requests after steady under the same load, kept apart")
    p.add_argument("--max-tokens", type=int, dest="output_tokens", help="output tokens per request")
    p.add_argument(
        "--arrival", choices=["closed", "constant", "poisson", "gamma"], help="load model (default: closed)"
    )
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--burstiness", type=float, help="gamma: shape (1 = Poisson, < 1 burstier)")
    p.add_argument("--max-concurrency", type=int, help="open loop: in-flight cap")
    p.add_argument("--think-time", help="closed loop: pause per client between requests, e.g. 500ms")
    p.add_argument("--seed", type=int, help="arrival schedule seed")
    p.add_argument("--slo-ttft-ms", type=float, help="goodput: TTFT objective")
    p.add_argument("--slo-tpot-ms", type=float, help="goodput: TPOT objective")
    p.add_argument("--slo-e2e-ms", type=float, help="goodput: E2E objective")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="infermeter", description="Load-test and measure LLM inference.")
    p.add_argument("--version", action="version", version=f"infermeter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("scenarios", help="list the built-in scenarios")

    run = sub.add_parser("run", help="run one scenario, or several at once, against a backend")
    run.add_argument(
        "scenario", nargs="+", help="built-in scenario name(s) (see `infermeter scenarios`) or YAML path(s)"
    )
    _load_flags(run)
    _backend_flags(run)

    sweep = sub.add_parser("sweep", help="run a scenario at rising load until it saturates; report the knee")
    sweep.add_argument("scenario", help="built-in scenario name or a YAML path")
    sweep.add_argument("--over", choices=["rate", "concurrency"], help="what rises (default: concurrency)")
    sweep.add_argument("--values", help="comma-separated stage loads, e.g. 1,2,4,8")
    sweep.add_argument("--start", type=float, help="first stage load of a geometric series")
    sweep.add_argument("--stop", type=float, help="last stage load of a geometric series")
    sweep.add_argument("--factor", type=float, help="series factor (default 2: doubling)")
    sweep.add_argument("--stage-requests", type=int, help="requests per stage")
    sweep.add_argument("--stage-duration", help="time per stage, e.g. 20s")
    sweep.add_argument("--min-gain", type=float, help="saturated below this throughput gain (default 0.05)")
    sweep.add_argument("--all-stages", action="store_true", help="run every stage, even past saturation")
    _load_flags(sweep)
    _backend_flags(sweep)

    cal = sub.add_parser("calibrate", help="measure idle GPU power and store it as the energy baseline")
    cal.add_argument("--seconds", default="30", help="how long to sample idle power (default 30)")
    _energy_flags(cal)

    daemon = sub.add_parser("daemon", help="probe targets at a low rate forever; serve /metrics and /status")
    daemon.add_argument("--config", type=Path, required=True, help="daemon YAML (targets, probe, sampling)")
    daemon.add_argument("--check", action="store_true", help="validate the config and exit")

    replay = sub.add_parser("replay", help="replay a recorded trace on its own clock")
    replay.add_argument("trace", type=Path, help="trace file: our JSONL, Azure CSV or Mooncake JSONL")
    replay.add_argument("--format", choices=["auto", "jsonl", "azure", "mooncake"], default="auto")
    replay.add_argument("--speed", type=float, default=1.0, help="replay this many times faster")
    replay.add_argument("--limit", type=int, help="only the first N requests")
    replay.add_argument(
        "--scenario", default="chat", help="scenario for endpoint, sampling and timeouts (default chat)"
    )
    replay.add_argument("--warmup", type=int, default=0, help="warmup requests before the trace")
    replay.add_argument("--lag-limit-ms", type=float, help="schedule-lag p99 above this: not trustworthy")
    _backend_flags(replay)

    imp = sub.add_parser("import-trace", help="convert an Azure CSV or Mooncake JSONL trace to ours")
    imp.add_argument("source", type=Path)
    imp.add_argument("-o", "--output", type=Path, required=True)
    imp.add_argument("--format", choices=["auto", "azure", "mooncake", "jsonl"], default="auto")

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

    add_analyze_parser(sub)

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


def _cmd_summarize(ns: argparse.Namespace, err: Console) -> int:
    loaded = load_records(ns.run_dir)
    for warning in loaded.warnings:
        err.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    targets: dict[str, dict[str, Any]] = {}
    manifest_path = ns.run_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            for sc in manifest.get("tenants") or [manifest["scenario"]]:
                targets[sc["name"]] = targets_for(sc.get("normalised") or {})
            if "trace" in manifest:
                for t in targets.values():
                    t["load"]["arrival"] = "trace"
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = f"{e.__class__.__name__}: {e}"
            err.print(
                Text.assemble(
                    ("warning: ", "yellow"), f"{manifest_path} unreadable ({why}); summarised without targets"
                ),
                soft_wrap=True,
            )
            targets = {}
    summary = summarize(loaded.records, targets, ns.run_dir if ns.run_dir.is_dir() else None)
    if ns.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        Console().print(render_summary(summary))
    return EXIT_OK


async def _sim_server(ns: argparse.Namespace, err: Console) -> int:
    from agent.backends._sim_server import serve
    from agent.backends.sim import parse_model

    values = kv(ns.set, "--set")
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


def _cmd_daemon(ns: argparse.Namespace, settings: Settings, err: Console) -> int:
    from agent.daemon import Daemon
    from agent.daemon_config import load_daemon_config

    config = load_daemon_config(ns.config)
    if ns.check:  # every target built (backend args, scenario) without contacting any backend
        targets = Daemon(ns.config).build_targets(config)
        err.print(f"{ns.config}: config ok; targets {', '.join(targets)}")
        return 0
    # a daemon's log goes to a collector: JSON, one event per state change (info unless debug is asked)
    level = "debug" if settings.log_level.lower() == "debug" else "info"
    _configure_logging(settings.model_copy(update={"log_json": True, "log_level": level}))
    return _run_loop(Daemon(ns.config).run())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``infermeter`` console script."""
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line usage error
        return e.code if isinstance(e.code, int) else EXIT_CONFIG
    settings = Settings()
    remember(settings.openai.api_key)
    _configure_logging(settings)
    err = Console(stderr=True)
    try:
        if ns.command == "scenarios":
            return _cmd_scenarios(Console())
        if ns.command == "summarize":
            return _cmd_summarize(ns, err)
        if ns.command == "analyze":
            return cmd_analyze(ns, err)
        if ns.command == "sim-server":
            return _run_loop(_sim_server(ns, err))
        if ns.command == "import-trace":
            return cmd_import_trace(ns, err)
        if ns.command == "calibrate":
            return cmd_calibrate(ns, settings, err)
        if ns.command == "daemon":
            return _cmd_daemon(ns, settings, err)
        command = {"run": cmd_run, "sweep": cmd_sweep, "replay": cmd_replay}[ns.command]
        return _run_loop(command(ns, settings, err))
    except ConfigError as e:
        _error(err, e)
        return EXIT_CONFIG
    except (InfermeterError, OSError) as e:
        _error(err, e)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    raise SystemExit(main())
