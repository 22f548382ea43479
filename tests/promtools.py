"""Find the Prometheus binaries the integration tests run (``make tools`` unpacks them into .tools/)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def binary(name: str) -> Path:
    """A Prometheus tool (Pushgateway, Alertmanager too) from $INFERMETER_PROMETHEUS_BIN, .tools/ or PATH."""
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


def grafana_module(name: str) -> Any:
    """A module of ``grafana/`` (``rules``, ``generate``), which is scripts, not a package."""
    import importlib.util
    import sys

    path = ROOT / "grafana" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"grafana_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
    """One of the tools as a plain quiet process."""
    return subprocess.Popen([str(binary(name)), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Prometheus:
    """A real Prometheus as a plain process on a loopback port, scraping ``targets`` every second.

    ``more_jobs`` adds scrape jobs (name → (targets, honor_labels)); ``alertmanager`` (host:port) is
    where firing alerts go.
    """

    def __init__(
        self,
        folder: Path,
        port: int,
        targets: list[str],
        *,
        job: str,
        rules: Path | None = None,
        honor_labels: bool = False,
        more_jobs: dict[str, tuple[list[str], bool]] | None = None,
        alertmanager: str | None = None,
    ) -> None:
        config = folder / "prometheus.yml"
        jobs = {job: (targets, honor_labels), **(more_jobs or {})}
        text = "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        if rules is not None:
            text += f"rule_files: ['{rules}']\n"
        if alertmanager is not None:
            text += f"alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{alertmanager}']}}]\n"
        text += "scrape_configs:\n"
        for name, (job_targets, honor) in jobs.items():
            text += f"  - job_name: {name}\n    honor_labels: {str(honor).lower()}\n"
            text += f"    static_configs: [{{targets: {job_targets!r}}}]\n"
        config.write_text(text)
        self.api = f"http://127.0.0.1:{port}"
        self.proc = _spawn(
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        )

    def stop(self) -> None:
        """Terminate and wait."""
        self.proc.terminate()
        self.proc.wait(30)


class Alertmanager:
    """A real Alertmanager on a loopback port (no cluster), routing every alert to ``webhook`` at once."""

    #: Debian's build reads its notification templates from here, whatever its flags say
    TEMPLATES = Path("/usr/share/prometheus/alertmanager/default.tmpl")

    def __init__(self, folder: Path, port: int, webhook: str) -> None:
        if not self.TEMPLATES.is_file():
            raise FileNotFoundError(
                f"{self.TEMPLATES} is missing, so Alertmanager would send nothing: run `make tools` as root"
            )
        config = folder / "alertmanager.yml"
        config.write_text(
            "route:\n  receiver: hook\n  group_by: [alertname, backend, model, candidate, task]\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            f"receivers:\n  - name: hook\n    webhook_configs: [{{url: '{webhook}', send_resolved: true}}]\n"
        )
        self.address = f"127.0.0.1:{port}"
        self.proc = _spawn(
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={folder / 'am'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
        )

    def stop(self) -> None:
        """Terminate and wait."""
        self.proc.terminate()
        self.proc.wait(30)
