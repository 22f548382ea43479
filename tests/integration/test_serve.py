"""``infermeter serve``: the embedded engine on loopback, driven by a run through openai; Ctrl-C ends it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import run_cli, start_cli

pytestmark = pytest.mark.slow


def test_serve_prints_its_url_serves_a_run_and_stops_on_ctrl_c(tmp_path: Path, cache_dir: Path) -> None:
    server = start_cli(["serve", "--port", "0", "--slots", "2", "--ctx-per-slot", "1024"], cache_dir)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        out = tmp_path / "run"
        args = ["run", "micro", "--backend", "openai", "--base-url", url, "--requests", "4", "--warmup", "0"]
        proc = run_cli([*args, "--no-progress", "--energy", "off", "--out", str(out)], cache_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["records"]["ok"] == 4
        assert manifest["backend"]["base_url"] == url
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-3000:]
    assert "engine stopped" in err
