"""report.html in a real headless Chromium: for a run (with energy), a sweep, an analysis and a study,
the page loads with no console error and every figure holds data; a run of 100,000 records gives a page
of the same size as a small one. Screenshots go to ``.test-output/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.scale_records import make
from tests.browser import PageReport, open_page
from tests.integration.conftest import ROOT, run_cli
from tests.integration.test_grafana_live import power_trace

pytestmark = pytest.mark.slow
SHOTS = ROOT / ".test-output"
SMOKE = ROOT / "scenarios" / "studies" / "sim-smoke.yaml"


def check(page: Path, expected: set[str], name: str) -> PageReport:
    assert page.is_file() and page.stat().st_size < 1_000_000  # the figures' weight, no library's
    text = page.read_text(encoding="utf-8")
    assert "cdn" not in text.lower().split("<script>", 1)[0] and 'src="http' not in text  # nothing fetched
    report = open_page(page)
    SHOTS.mkdir(exist_ok=True)
    (SHOTS / f"report-{name}.png").write_bytes(report.screenshot)
    assert report.errors == [], report.errors
    assert report.screenshot.startswith(b"\x89PNG") and len(report.screenshot) > 10_000
    ids = {f["id"] for f in report.figures}
    assert expected <= ids, ids
    for figure in report.figures:
        assert figure["rendered"] and figure["traces"] > 0 and figure["points"] > 0, figure
    return report


def run(args: list[str], cache_dir: Path) -> None:
    proc = run_cli(args, cache_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_run_and_a_sweep_page(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    run(
        [
            "run",
            "chat",
            "--backend",
            "sim",
            "--backend-arg",
            "ttft_ms=30",
            "--backend-arg",
            "itl_ms=3",
            "--rate",
            "20",
            "--duration",
            "4s",
            "--warmup",
            "2",
            "--max-tokens",
            "16",
            "--no-progress",
            "--energy",
            f"replay:{power_trace(tmp_path / 'power.csv')}",
            "--energy-baseline",
            "1s",
            "--out",
            str(out),
        ],
        cache_dir,
    )
    report = check(
        out / "report.html", {"latency-over-time", "cdfs", "throughput-over-time", "energy-timeline"}, "run"
    )
    assert report.title == "infermeter run run"
    sweep = tmp_path / "sweep"
    args = [
        "sweep",
        "chat",
        "--backend",
        "sim",
        "--values",
        "1,2,4",
        "--stage-requests",
        "6",
        "--max-tokens",
        "8",
    ]
    run([*args, "--energy", "off", "--no-progress", "--out", str(sweep)], cache_dir)
    check(sweep / "report.html", {"latency-over-time", "sweep-curve"}, "sweep")


def test_an_analysis_page(tmp_path: Path, cache_dir: Path) -> None:
    for name, ttft in (("base", 20), ("slow", 60)):
        args = ["run", "chat", "--backend", "sim", "--backend-arg", f"ttft_ms={ttft}", "--requests", "16"]
        run(
            [*args, "--max-tokens", "8", "--energy", "off", "--no-progress", "--out", str(tmp_path / name)],
            cache_dir,
        )
    out = tmp_path / "analysis"
    run(
        [
            "analyze",
            str(tmp_path / "slow"),
            "--baseline",
            str(tmp_path / "base"),
            "--out",
            str(out),
            "--no-progress",
            "--no-semscore",
            "--resamples",
            "200",
            "--no-plots",
        ],
        cache_dir,
    )
    check(out / "report.html", {"cdf-chat-ttft_ms", "cdf-chat-e2e_ms"}, "analysis")
    assert "verdict" in (out / "report.html").read_text(encoding="utf-8")


def test_a_study_page(tmp_path: Path, cache_dir: Path) -> None:
    study = tmp_path / "sim-smoke.yaml"
    shutil.copy(SMOKE, study)
    out = tmp_path / "study"
    run(["study", str(study), "--out", str(out), "--no-progress"], cache_dir)
    check(out / "report.html", {"study-throughput", "study-cells-ttft_ms", "study-cells-e2e_ms"}, "study")
    assert "Recommendation" in (out / "report.html").read_text(encoding="utf-8")


def test_a_large_run_page_weighs_what_a_small_one_does(tmp_path: Path, cache_dir: Path) -> None:
    small = tmp_path / "small"
    args = ["run", "chat", "--backend", "sim", "--requests", "40", "--concurrency", "4", "--max-tokens", "8"]
    run([*args, "--energy", "off", "--no-progress", "--out", str(small)], cache_dir)
    large = tmp_path / "large"
    make(small, large, 100_000)
    run(["summarize", str(large), "--html"], cache_dir)
    page = large / "report.html"
    report = check(page, {"latency-over-time", "cdfs", "throughput-over-time"}, "large")
    assert page.stat().st_size < 2 * (small / "report.html").stat().st_size
    over_time = next(f for f in report.figures if f["id"] == "latency-over-time")
    assert over_time["points"] <= 2 * 200  # two series of time bins, never a marker per request
    assert "100000 records" in page.read_text(encoding="utf-8")
