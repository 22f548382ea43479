"""Find the Prometheus binaries the integration tests run (``make tools`` unpacks them into .tools/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def binary(name: str) -> Path:
    """``prometheus`` or ``promtool``: $INFERMETER_PROMETHEUS_BIN, then .tools/, then PATH."""
    places = [os.environ.get("INFERMETER_PROMETHEUS_BIN"), str(ROOT / ".tools/prometheus/usr/bin")]
    for place in places:
        if place and (Path(place) / name).is_file():
            return Path(place) / name
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"{name} not found: run `make tools` (unpacks the Debian prometheus package into .tools/) "
        "or set INFERMETER_PROMETHEUS_BIN to a folder holding it"
    )
