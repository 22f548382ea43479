"""Flag groups several commands share: the backend, the load, energy and the run's /metrics endpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.backends import available
from agent.cli.common import port
from agent.core.overrides import overrides_of
from agent.core.scenario import Scenario

__all__ = [
    "backend_flags",
    "energy_flags",
    "load_flags",
    "override_flags",
    "request_flags",
    "server_flags",
    "workload_flags",
]


def energy_flags(p: argparse.ArgumentParser) -> None:
    """``--energy``, ``--energy-interval``, ``--energy-baseline``."""
    p.add_argument(
        "--energy",
        default="auto",
        help="power source: auto (NVML if present), nvml, off, replay:TRACE.csv, dcgm:URL (a DCGM "
        "exporter on the GPU host), infermeter:URL (an infermeter daemon beside the GPUs)",
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
    server_flags(p)
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


def server_flags(p: argparse.ArgumentParser) -> None:
    """The server's own side: its Prometheus endpoints scraped beside the run, and its prefix cache."""
    g = p.add_argument_group("the server's side (see docs/backends.md)")
    g.add_argument(
        "--server-metrics",
        action="append",
        default=[],
        metavar="URL|auto|off",
        help="scrape this Prometheus endpoint while the run works (repeat for several); auto (default): "
        "the backend's own /metrics when it serves one; off: none",
    )
    g.add_argument(
        "--server-metrics-interval", default="1s", help="how often the server's metrics are read (default 1s)"
    )
    g.add_argument(
        "--prefix-cache",
        choices=["reset", "keep"],
        default="reset",
        help="reset the server's prefix cache before each stage where it has a way (default), or keep it",
    )


def load_flags(p: argparse.ArgumentParser) -> None:
    """Overrides of the scenario's size, load shape and objectives, then the workload's."""
    override_flags(p)
    workload_flags(p)


def override_flags(
    p: argparse.ArgumentParser,
    *,
    only: frozenset[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """A flag for every scenario field that declares one (``agent.core.overrides``), or for ``only`` those.

    The type, the choices and the help come from the field; ``defaults`` sets a command's own default.
    """
    for o in overrides_of(Scenario):
        if only is not None and o.flag.name not in only:
            continue
        kind, choices = o.kind()
        extra: dict[str, Any] = {"type": kind} if kind is not None else {}
        if choices is not None:
            extra["choices"] = choices
        if defaults and o.flag.name in defaults:
            extra["default"] = defaults[o.flag.name]
        p.add_argument(o.flag.name, dest=o.flag.dest, help=o.help, **extra)


def workload_flags(p: argparse.ArgumentParser) -> None:
    """The common workloads without a scenario file: synthetic lengths, shared prefixes, a dataset file."""
    g = p.add_argument_group("workload (instead of the scenario's prompts; see docs/scenarios.md)")
    g.add_argument("--input-tokens", metavar="LEN", help="synthetic prompts: 512, 512+-64 (normal), 256-1024")
    g.add_argument(
        "--output-tokens",
        dest="workload_output",
        metavar="LEN",
        help="output lengths of a workload: 128, 128+-16, 64-256",
    )
    g.add_argument(
        "--length-of",
        choices=["prompt", "content"],
        help="chat: the drawn length is the whole prompt at the server (default) or the user's content only",
    )
    g.add_argument("--prefix-groups", type=int, metavar="G", help="shared prefixes: this many groups")
    g.add_argument("--prefix-tokens", type=int, metavar="P", help="shared prefixes: tokens each group shares")
    g.add_argument(
        "--suffix-tokens", metavar="LEN", help="shared prefixes: each prompt's own tokens (default 32)"
    )
    g.add_argument("--prompts-per-group", type=int, help="shared prefixes: prompts per group (default 8)")
    g.add_argument("--workload-seed", type=int, help="seed of the workload's lengths, texts and sample")
    g.add_argument("--tokenizer", type=Path, help="a local tokenizer.json for servers without /tokenize")
    _dataset_flags(g)
    request_flags(p)


def _dataset_flags(g: argparse._ArgumentGroup) -> None:
    """A dataset file and how to read it."""
    g.add_argument(
        "--dataset",
        type=Path,
        metavar="PATH",
        help="ShareGPT JSON, JSONL, JSON, CSV, Parquet, or a Hugging Face dataset folder",
    )
    g.add_argument("--dataset-format", choices=["auto", "sharegpt", "jsonl", "json", "csv", "parquet", "hf"])
    g.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="which column holds prompt, answer, system, output_tokens, messages, conversation, "
        "turn, timestamp or id",
    )
    g.add_argument(
        "--turns",
        choices=["first", "all"],
        help="a conversation dataset: first turns as prompts "
        "(default), or whole conversations replayed turn by turn",
    )
    g.add_argument(
        "--answers",
        choices=["server", "dataset"],
        help="conversations: later turns see the server's answers (default) or the dataset's",
    )
    g.add_argument("--sample", type=int, metavar="N", help="a dataset: N conversations drawn with the seed")


def request_flags(p: argparse.ArgumentParser) -> None:
    """What every request carries: endpoint, headers, extra body fields, streaming, models and weights."""
    g = p.add_argument_group("request shape")
    g.add_argument("--endpoint", choices=["chat", "completions"], help="the API requests go to")
    g.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an HTTP header on every request (secret ones are masked; ${VAR} reads the environment)",
    )
    g.add_argument(
        "--extra-body",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a JSON body field on every request, e.g. min_tokens=16 or model=my-lora",
    )
    g.add_argument(
        "--no-stream", action="store_true", help="ask for whole answers: TTFT is the whole response"
    )
    g.add_argument(
        "--model-weight",
        action="append",
        default=[],
        metavar="NAME=WEIGHT",
        help="spread requests over several models (LoRA adapters) by weight; figures per model",
    )
