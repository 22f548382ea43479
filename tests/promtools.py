"""Find the Prometheus binaries the integration tests run (``make tools`` unpacks them into .tools/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def binary(name: str) -> Path:
    """A Prometheus binary (or the Pushgateway) from $INFERMETER_PROMETHEUS_BIN, then .tools/, then PATH."""
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


class Prometheus:
    """A real Prometheus as a plain process on a loopback port, scraping ``targets`` every second."""

    def __init__(
        self,
        folder: Path,
        port: int,
        targets: list[str],
        *,
        job: str,
        rules: Path | None = None,
        honor_labels: bool = False,
    ) -> None:
        import subprocess

        config = folder / "prometheus.yml"
        rule_files = f"rule_files: ['{rules}']\n" if rules is not None else ""
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            + rule_files
            + f"scrape_configs:\n  - job_name: {job}\n    honor_labels: {str(honor_labels).lower()}\n"
            + f"    static_configs: [{{targets: {targets!r}}}]\n"
        )
        self.api = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                str(binary("prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Terminate and wait."""
        self.proc.terminate()
        self.proc.wait(30)
