"""``infermeter serve``: the embedded llama.cpp engine as a server on loopback.

``--api openai`` (the default) is llama.cpp's own OpenAI-compatible server. ``--api ollama`` puts the
Ollama-protocol face in front of the same engine — an emulation, labelled as one in its version string —
so the ``ollama`` backend and a study's Ollama variant can run where no Ollama server can.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from agent.backends import create
from agent.backends.requantize import REQUANT_TYPES
from agent.cli.common import EXIT_OK, App, port
from agent.core.errors import ConfigError

NAME = "serve"
HELP = "serve a GGUF model (default: the built-in Gemma 3 270M) on loopback until Ctrl-C"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the API, the port and the engine's slots."""
    p.add_argument("--model-path", type=Path, help="a GGUF file (default: the built-in Gemma 3 270M)")
    p.add_argument(
        "--api",
        choices=("openai", "ollama"),
        default="openai",
        help="openai: llama.cpp's OpenAI-compatible server (default); ollama: an Ollama-protocol EMULATION "
        "over the same engine",
    )
    p.add_argument("--port", type=port, default=0, help="loopback port (default 0: a free one, printed)")
    p.add_argument(
        "--slots", type=int, default=4, help="requests served at once (llama.cpp slots, default 4)"
    )
    p.add_argument("--ctx-per-slot", type=int, default=4096, help="context tokens per slot (default 4096)")
    p.add_argument("--threads", type=int, help="CPU threads for the engine (default: llama.cpp's choice)")
    p.add_argument(
        "--requantize", choices=REQUANT_TYPES, help="serve the model re-quantised to this type (made once)"
    )
    p.add_argument("--log", type=Path, help="write the engine's own log here (--api openai)")
    p.add_argument(
        "--timings-log", type=Path, help="--api ollama: the engine's raw timings per request id, as JSONL"
    )


def _signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_stopped(url: str, how: str, stop: asyncio.Event, app: App) -> None:
    """Print the URL alone on standard output (for scripts) and how to use it on stderr; wait for stop."""
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    app.err.print(how)
    await stop.wait()


async def run(ns: argparse.Namespace, app: App) -> int:
    """Start the engine, print its URL on standard output, serve until SIGINT or SIGTERM."""
    stop = _signals()
    if ns.api == "ollama":
        return await _serve_ollama(ns, app, stop)
    args = {
        "n_parallel": ns.slots,
        "ctx_per_slot": ns.ctx_per_slot,
        "port": ns.port,
        "cache_dir": app.settings.cache_dir,
        "model_path": ns.model_path,
        "threads": ns.threads,
        "log_path": ns.log,
        "requantize": ns.requantize,
    }
    backend = create("embedded", {k: v for k, v in args.items() if v is not None})
    with app.err.status("starting the engine (the first start assembles the built-in model)"):
        await backend.start()
    try:
        url = str(backend.base_url)  # type: ignore[attr-defined]
        how = (
            f"serving {backend.model} at {url} (OpenAI API under /v1, {ns.slots} slots); use it with "
            f"`--backend openai --base-url {url}`, the daemon or a study; Ctrl-C stops"
        )
        await _until_stopped(url, how, stop, app)
    finally:
        await backend.close()
    app.err.print("engine stopped")
    return EXIT_OK


async def _serve_ollama(ns: argparse.Namespace, app: App, stop: asyncio.Event) -> int:
    from aiohttp import web

    from agent.backends.builtin_model import model_file
    from agent.backends.ollama_face import MODEL, OllamaFace

    if ns.model_path is not None and not ns.model_path.is_file():
        raise ConfigError(f"model file {ns.model_path} does not exist; pass an existing GGUF")
    with app.err.status("starting the engine behind the Ollama face"):
        path = await asyncio.to_thread(model_file, ns.model_path, app.settings.cache_dir, ns.requantize)
        template = "gemma" if ns.model_path is None else None
        face = OllamaFace(
            path, timings_log=ns.timings_log, n_parallel=ns.slots, threads=ns.threads, chat_template=template
        )
        await face.start()
    runner = web.AppRunner(face.app(), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", ns.port)
        await site.start()
        sockets: Any = site._server.sockets  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        how = (
            f"Ollama EMULATION serving {MODEL} ({path.name}) at {url}; use it with "
            f"`--backend ollama --base-url {url}`; Ctrl-C stops"
        )
        await _until_stopped(url, how, stop, app)
    finally:
        await runner.cleanup()
        await face.stop()
    app.err.print("engine stopped")
    return EXIT_OK
