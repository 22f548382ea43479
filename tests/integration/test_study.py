"""``infermeter study`` end to end on the simulator: cells, the decision, resume, Ctrl-C, a changed file."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ROOT, run_cli, start_cli

SMOKE = ROOT / "scenarios" / "studies" / "sim-smoke.yaml"
pytestmark = pytest.mark.slow


def test_the_smoke_study_decides_and_resumes(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "study"
    proc = run_cli(["study", str(SMOKE), "--out", str(out), "--no-progress"], cache_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "study.json").read_text())
    assert result["schema_version"] == 1 and result["kind"] == "infermeter-study"
    assert result["order"] == "interleaved" and result["seed"] == 7
    assert [c["status"] for c in result["cells"]] == ["completed"] * 8
    for cell in result["cells"]:  # every cell an ordinary run directory
        folder = out / "cells" / cell["name"]
        assert (folder / "records.jsonl").is_file() and (folder / "cell.log").is_file()
        assert json.loads((folder / "manifest.json").read_text())["status"] == "completed"
    assert {r["scenario"]: r["variant"] for r in result["recommendations"]} == {
        "chat": "fast",
        "micro": "fast",
    }
    decision = {(d["scenario"], d["variant"]): d for d in result["decision"]}
    for sc in ("chat", "micro"):
        assert decision[(sc, "slow")]["ttft_p50_ms"] > 2 * decision[(sc, "fast")]["ttft_p50_ms"]
    ttft = [r for r in result["equivalence"] if r["metric"] == "ttft_ms"]
    assert len(ttft) == 2 and all(r["verdict"] != "equivalent" for r in ttft)
    report = (out / "report.md").read_text()
    assert "## Recommendation" in report and "Order: interleaved" in report and "## Equivalence" in report

    again = run_cli(["study", str(SMOKE), "--out", str(out), "--no-progress"], cache_dir, timeout=300)
    assert again.returncode == 0 and "(0 now, 8 kept)" in again.stderr


def _study(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(SMOKE.read_text()) | {"repetitions": 3, "requests": 30, **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _completed(out: Path) -> int:
    manifests = (out / "cells").glob("*/manifest.json")
    return sum(json.loads(p.read_text()).get("status") == "completed" for p in manifests)


def test_ctrl_c_stops_the_study_and_the_same_command_resumes_it(tmp_path: Path, cache_dir: Path) -> None:
    study, out = _study(tmp_path), tmp_path / "study"
    args = ["study", str(study), "--out", str(out), "--no-progress"]
    proc = start_cli(args, cache_dir)
    deadline = time.monotonic() + 120
    while _completed(out) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "run the same command again to resume" in err
    done = _completed(out)
    assert 2 <= done < 12
    statuses = [json.loads(p.read_text()).get("status") for p in (out / "cells").glob("*/manifest.json")]
    assert statuses.count("interrupted") <= 1  # only the cell in flight, kept with its records

    resumed = run_cli(args, cache_dir, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({12 - done} now, {done} kept)" in resumed.stderr
    assert _completed(out) == 12


def test_a_changed_study_file_is_refused_unless_allowed(tmp_path: Path, cache_dir: Path) -> None:
    study, out = _study(tmp_path, repetitions=1, requests=4), tmp_path / "study"
    args = ["study", str(study), "--out", str(out), "--no-progress"]
    assert run_cli(args, cache_dir, timeout=300).returncode == 0
    _study(tmp_path, repetitions=1, requests=4, seed=8)
    refused = run_cli(args, cache_dir, timeout=60)
    assert refused.returncode == 2 and "changed" in refused.stderr and "--allow-changed" in refused.stderr
    allowed = run_cli([*args, "--allow-changed"], cache_dir, timeout=300)
    assert allowed.returncode == 0 and "(0 now, 4 kept)" in allowed.stderr


SERVED = """\
name: served
baseline: sim
variants:
  sim: {backend: sim}
  face:
    backend: ollama
    description: the Ollama emulation, started by the study
    serve: {slots: 1, threads: 2}
  broken:
    backend: openai
    model_path: nowhere.gguf
    serve: {startup_timeout_s: 120}
scenarios: [micro]
repetitions: 2
order: blocked
requests: 3
warmup: 0
max_tokens: 8
"""


def test_a_study_starts_and_stops_the_servers_of_served_variants(tmp_path: Path, cache_dir: Path) -> None:
    study, out = tmp_path / "served.yaml", tmp_path / "study"
    study.write_text(SERVED)
    args = ["study", str(study), "--out", str(out), "--no-progress"]
    proc = start_cli(args, cache_dir)
    deadline = time.monotonic() + 300
    while not (out / "cells" / "face--micro--r1" / "summary.json").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C while the face's server is up
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    face_log = out / "servers" / "face.log"
    assert face_log.read_text().rstrip().endswith("engine stopped")  # stopped with the study

    resumed = run_cli(args, cache_dir, timeout=300)
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # failed cells: the study says so in its status
    result = json.loads((out / "study.json").read_text())
    status = {c["name"]: c["status"] for c in result["cells"]}
    assert status["face--micro--r1"] == status["face--micro--r2"] == "completed"
    assert status["broken--micro--r1"] == status["broken--micro--r2"] == "failed"
    cell = out / "cells" / "face--micro--r2"
    manifest = json.loads((cell / "manifest.json").read_text())
    assert manifest["backend"]["ollama_version"] == "0.0.0-infermeter-emulation"
    assert manifest["backend"]["base_url"].startswith("http://127.0.0.1:")
    records = [json.loads(line) for line in (cell / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["status"] == "ok" and r["native_source"] == "ollama" for r in records)
    why = (out / "cells" / "broken--micro--r1" / "cell.log").read_text()
    assert "the server of variant 'broken' did not start" in why and "does not exist" in why
    assert face_log.read_text().rstrip().endswith("engine stopped")
    assert "1 cell(s) failed" not in resumed.stderr and "2 cell(s) failed" in resumed.stderr


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line holds ``text`` (zombies left out)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_sigkill_of_a_study_leaves_no_cell_running(tmp_path: Path, cache_dir: Path) -> None:
    study, out = _study(tmp_path, requests=20_000), tmp_path / "study"  # a cell that would run for minutes
    proc = start_cli(["study", str(study), "--out", str(out), "--no-progress"], cache_dir)
    cells = str(out / "cells")
    deadline = time.monotonic() + 120
    while not [p for p in _processes_naming(cells) if p != proc.pid] and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    running = [p for p in _processes_naming(cells) if p != proc.pid]
    assert running, "no cell process was seen"
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while _processes_naming(cells) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(cells) == [], "a cell outlived the study"
    statuses = [json.loads(p.read_text()).get("status") for p in (out / "cells").glob("*/manifest.json")]
    assert "running" not in statuses  # the cell in flight said how it ended
