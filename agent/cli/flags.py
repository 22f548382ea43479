"""Flag groups several commands share: the backend, the load, energy and the run's /metrics endpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.backends import available
from agent.cli.common import port

__all__ = ["backend_flags", "energy_flags", "load_flags"]


def energy_flags(p: argparse.ArgumentParser) -> None:
    """``--energy``, ``--energy-interval``, ``--energy-baseline``."""
    p.add_argument(
        "--energy", default="auto", help="power source: auto (NVML if present), nvml, off, replay:TRACE.csv"
    )
    p.add_argument("--energy-interval", default="100ms", help="power poll period (default 100ms)")
    p.add_argument(
        "--energy-baseline",
        default="auto",
        help="idle baseline: auto (stored `calibrate` result, else 10 s before the load), off, or a duration",
    )


def backend_flags(p: argparse.ArgumentParser) -> None:
    """The backend, the run directory, progress, energy and the run's /metrics endpoint."""
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
    energy_flags(p)
    p.add_argument(
        "--serve-metrics", action="store_true", help="expose Prometheus /metrics while the run lasts"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)")
    p.add_argument(
        "--metrics-port", type=port, default=9464, help="port for /metrics (default 9464; 0 = any)"
    )
    p.add_argument(
        "--metrics-linger",
        default="0s",
        help="keep serving /metrics this long after the run ends, e.g. 30s (one last scrape)",
    )


def load_flags(p: argparse.ArgumentParser) -> None:
    """Overrides of the scenario's size, load shape and objectives."""
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
