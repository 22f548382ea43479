"""The manifest beside every run (method §2): what ran, where, with which versions, and how it ended."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from agent import __version__
from agent.core.manifest import (
    MANIFEST_SCHEMA_VERSION,
    Gpu,
    Host,
    Manifest,
    ScenarioRef,
    Tool,
)
from agent.core.scenario import Scenario

__all__ = ["build_manifest", "gpu_info"]

_PACKAGES = (
    "aiohttp",
    "uvloop",
    "pydantic",
    "numpy",
    "xllamacpp",
    "ollama",
    "torch",
    "transformers",
    "nvidia-ml-py",
    "prometheus-client",
)


def _git_sha() -> dict[str, object]:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha or None, "git_dirty": bool(dirty)}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in _PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def gpu_info() -> dict[str, object]:
    """GPU name/driver/CUDA from NVML, or why there is none (never a crash)."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "NVML not found (nvidia-ml-py not installed)"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return {"available": False, "reason": f"NVML not usable: {e}"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = [str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
        return {
            "available": count > 0,
            "devices": names,
            "driver": str(pynvml.nvmlSystemGetDriverVersion()),
            "cuda": pynvml.nvmlSystemGetCudaDriverVersion(),
        }
    except pynvml.NVMLError as e:
        return {"available": False, "reason": f"NVML query failed: {e}"}
    finally:
        pynvml.nvmlShutdown()


def build_manifest(run_id: str, scenarios: list[Scenario], argv: list[str]) -> Manifest:
    """The manifest at the start of a run; the launch adds backend facts, stage windows, end and status."""
    refs = [
        ScenarioRef(name=sc.name, source=sc.source, sha256=sc.config_hash(), normalised=sc.normalised())
        for sc in scenarios
    ]
    out = Manifest(
        schema_version=MANIFEST_SCHEMA_VERSION,
        run_id=run_id,
        status="running",
        command=argv,
        tool=Tool(name="infermeter", version=__version__, **_git_sha()),
        scenario=refs[0],
        host=Host(
            hostname=socket.gethostname(),
            platform=platform.platform(),
            machine=platform.machine(),
            cpu_count=os.cpu_count(),
            python=sys.version.split()[0],
        ),
        gpu=Gpu.model_validate(gpu_info()),
        packages=_versions(),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        ended_at=None,
    )
    if len(refs) > 1:
        out.tenants = refs
    return out
