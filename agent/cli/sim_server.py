"""``infermeter sim-server``: the simulator served on loopback (OpenAI SSE and Ollama NDJSON)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from agent.cli.common import EXIT_OK, App, kv
from agent.sim.model import parse_model
from agent.sim.server import serve

NAME = "sim-server"
HELP = "serve the simulator (OpenAI SSE + Ollama NDJSON) on loopback"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Where to listen, and the timing model's fields."""
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ttft-ms", help="TTFT: a number or kind:mean[:sd], e.g. lognormal:100:20")
    p.add_argument("--itl-ms", help="gap between tokens: a number or kind:mean[:sd]")
    p.add_argument("--output-tokens", help="tokens per answer (default: the request's max_tokens)")
    p.add_argument("--emission-log", type=Path, help="JSONL with every chunk's send time (ground truth)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any simulator model field"
    )


async def run(ns: argparse.Namespace, app: App) -> int:
    """Serve until Ctrl-C or SIGTERM; the address goes to standard output, one line."""
    err = app.err

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
