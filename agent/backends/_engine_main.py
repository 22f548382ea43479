"""Child process that hosts llama.cpp's HTTP server through xllamacpp (``python -m`` this module).

Reads one JSON config from argv, prints one JSON line ``{"address": ..., "pid": ...}`` when the server
listens, then serves until stdin closes or SIGTERM/SIGINT arrives.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from typing import Any, TypedDict

__all__ = ["EngineConfig", "main"]


class EngineConfig(TypedDict):
    """What the embedded backend hands its engine process (one JSON argument)."""

    model_path: str
    n_parallel: int
    n_ctx: int
    threads: int | None
    chat_template: str | None
    port: int
    swa_full: bool


def _params(cfg: EngineConfig) -> Any:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = cfg["model_path"]
    p.hostnames = ["127.0.0.1"]
    p.port = cfg["port"]
    p.n_parallel = cfg["n_parallel"]
    p.n_ctx = cfg["n_ctx"]
    # the server's own Prometheus series (requests processing and deferred, token counters, KV use)
    # and its slots, whose prompt caches a run can erase between stages
    p.endpoint_metrics = True
    p.endpoint_slots = True
    # llama.cpp answers the slot actions (erase among them) only with a save folder; nothing is saved
    p.slot_save_path = tempfile.mkdtemp(prefix="infermeter-slots-")
    if cfg["threads"]:
        p.cpuparams.n_threads = cfg["threads"]
        p.cpuparams_batch.n_threads = cfg["threads"]
    if cfg["swa_full"]:
        p.swa_full = True  # sliding-window layers keep every position, so a cached prefix can be reused
    if cfg["chat_template"]:
        p.use_jinja = False
        p.chat_template = cfg["chat_template"]
    return p


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> int:
    """Start the server, announce its address, serve until told to stop."""
    cfg: EngineConfig = json.loads(sys.argv[1])
    import xllamacpp

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = xllamacpp.Server(_params(cfg))
    address = server.listening_address
    sys.stdout.write(json.dumps({"address": address, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()
    finally:
        del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
