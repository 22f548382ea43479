"""Damaged record files read as the docs promise: a line that is not UTF-8 or not a record is skipped with
a warning, a line past the cap is skipped without being read whole, and the good lines all count."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import main
from analysis import records as records_module
from analysis.records import bounded_lines, load_records
from tests.integration.conftest import ROOT


def good_line(i: int) -> bytes:
    record = {
        "run_id": "r",
        "scenario": "chat",
        "request_id": f"q{i}",
        "seq": i,
        "backend": "sim",
        "model": "m",
        "endpoint": "chat",
        "status": "ok",
        "intended_offset_ms": float(i),
        "sent_offset_ms": float(i),
        "schedule_lag_ms": 0.0,
        "sent_unix_s": 1.0,
        "ttft_ms": 5.0,
        "e2e_ms": 9.0,
        "output_tokens": 3,
        "chunks": 3,
    }
    return json.dumps(record).encode() + b"\n"


def damaged(path: Path) -> Path:
    path.write_bytes(
        good_line(0)
        + b'{"run_id": "r", "model": "\xff\xfe not utf-8"}\n'
        + good_line(1)
        + b"\xc3\x28"
        + good_line(2)[2:]  # invalid UTF-8 inside an otherwise whole record
        + good_line(3)
    )
    return path


def test_lines_that_are_not_utf8_are_warnings(tmp_path: Path) -> None:
    loaded = load_records(damaged(tmp_path / "records.jsonl"))
    assert [r.request_id for r in loaded.records] == ["q0", "q1", "q3"]
    assert [w.split(": ", 1)[0].rsplit(":", 1)[1] for w in loaded.warnings] == ["2", "4"]


@pytest.mark.parametrize("command", ["summarize", "analyze"])
def test_summarize_and_analyze_skip_them_with_a_warning(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    damaged(run / "records.jsonl")
    args = [command, str(run)]
    if command == "analyze":
        args += ["--out", str(tmp_path / "out"), "--no-progress", "--no-semscore", "--no-plots"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "skipped unreadable record" in captured.err + (
        (tmp_path / "out" / "report.md").read_text(encoding="utf-8") if command == "analyze" else ""
    )


def test_a_line_past_the_cap_is_skipped_in_pieces() -> None:
    data = good_line(0) + b"x" * 5000 + b"\n" + b"y" * 200 + b"\n" + good_line(2)
    lines = list(bounded_lines(io.BufferedReader(io.BytesIO(data), buffer_size=16), 600))
    assert [n for n, line in lines if line is None] == [2] and len(lines) == 4
    assert lines[0][1] == good_line(0) and lines[-1][1] == good_line(2)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"x", b"\n")),
    cap=st.integers(1, 40),
    block=st.integers(1, 17),
)
def test_bounded_lines_are_the_files_lines(data: bytes, cap: int, block: int) -> None:
    """Held equal to ``bytes.splitlines``: the same lines, each over the cap replaced by None."""
    want = [(i, line if len(line) <= cap else None) for i, line in enumerate(data.split(b"\n"), 1)]
    want = [(i, None if line is None else line + b"\n") for i, line in want]
    if data.endswith(b"\n") or not data:
        want = want[:-1]
    else:  # the last line has no newline
        n, last = want[-1]
        want[-1] = (n, None if last is None or len(last) - 1 > cap else last[:-1])
    want = [(i, None if line is not None and len(line) > cap else line) for i, line in want]
    assert list(bounded_lines(io.BytesIO(data), cap, block)) == want


def test_an_enormous_sparse_line_costs_bounded_memory(tmp_path: Path) -> None:
    """The reported case at a quarter of its size: a sparse 512 MiB line, then good records."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / "records.jsonl"
    with path.open("wb") as fh:
        fh.write(good_line(0))
        fh.truncate(512 << 20)  # a hole of zeros, no newline
        fh.seek(0, 2)
        fh.write(b"\n" + good_line(1))
    probe = (
        "import sys; from agent.cli import main; code = main(['summarize', sys.argv[1], '--json']);"
        # VmHWM is this process's own peak (ru_maxrss would carry the forking parent's over exec)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(hwm, file=sys.stderr); sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped a line over" in proc.stderr and "Traceback" not in proc.stderr
    peak_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024
    assert peak_mib < 320, f"peak RSS {peak_mib:.0f} MiB: the line was read whole"
    assert json.loads(proc.stdout)["scenarios"]["chat"]["requests"]["ok"] == 2
    assert records_module.MAX_LINE_BYTES < 512 << 20  # the cap is what the test measures
