"""``infermeter serve``: the embedded llama.cpp engine as an OpenAI-compatible server on loopback."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from agent.backends import create
from agent.cli.common import EXIT_OK, App, port

NAME = "serve"
HELP = "serve a GGUF model (default: the built-in Gemma 3 270M) on loopback, OpenAI-compatible, until Ctrl-C"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the port and the engine's slots."""
    p.add_argument("--model-path", type=Path, help="a GGUF file (default: the built-in Gemma 3 270M)")
    p.add_argument("--port", type=port, default=0, help="loopback port (default 0: a free one, printed)")
    p.add_argument(
        "--slots", type=int, default=4, help="requests served at once (llama.cpp slots, default 4)"
    )
    p.add_argument("--ctx-per-slot", type=int, default=4096, help="context tokens per slot (default 4096)")
    p.add_argument("--threads", type=int, help="CPU threads for the engine (default: llama.cpp's choice)")
    p.add_argument("--log", type=Path, help="write the engine's own log here")


async def run(ns: argparse.Namespace, app: App) -> int:
    """Start the engine, print its URL on standard output, serve until SIGINT or SIGTERM."""
    args = {"n_parallel": ns.slots, "ctx_per_slot": ns.ctx_per_slot, "port": ns.port,
            "cache_dir": app.settings.cache_dir, "model_path": ns.model_path, "threads": ns.threads,
            "log_path": ns.log}  # fmt: skip
    backend = create("embedded", {k: v for k, v in args.items() if v is not None})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with app.err.status("starting the engine (the first start assembles the built-in model)"):
        await backend.start()
    try:
        url = str(backend.base_url)  # type: ignore[attr-defined]
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
        app.err.print(
            f"serving {backend.model} at {url} (OpenAI API under /v1, {ns.slots} slots); use it with "
            f"`--backend openai --base-url {url}`, the daemon or a study; Ctrl-C stops"
        )
        await stop.wait()
    finally:
        await backend.close()
    app.err.print("engine stopped")
    return EXIT_OK
