"""Typed analysis results and their registered renderers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from agent.core.errors import UnknownNameError
from analysis.analyze import Options, analyze
from analysis.render import RENDERERS, render
from analysis.render import markdown as md
from analysis.results import AnalysisResult
from analysis.runs import load_run
from tests.unit.analysis.test_analyze_cli import ANSWERS, write_run


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> AnalysisResult:
    root = tmp_path_factory.mktemp("runs")
    base = load_run(write_run(root / "base", seed=1))
    same = load_run(write_run(root / "same", seed=2))
    slow = load_run(write_run(root / "slow", slow=1.5, answers={**ANSWERS, "q1": "Kyoto"}, seed=3))
    opts = Options(resamples=200, semscore=False, usd_per_hour=1.0, tokens_per_month=1e8)
    return analyze([same, slow], base, opts)


def test_the_json_is_the_result_and_reads_back_unchanged(three_runs: AnalysisResult) -> None:
    text = render(three_runs, "json")
    data = json.loads(text)
    assert data == three_runs.dump()
    again = AnalysisResult.model_validate(data)
    assert again.dump() == data  # nothing added, renamed or dropped on the way through the types
    assert again.comparisons["slow"].scenarios["chat"][0].verdict in ("worse", "no detectable change")


def test_markdown_is_its_sections_in_order(three_runs: AnalysisResult) -> None:
    report = render(three_runs, "markdown")
    parts = ["\n".join(section(three_runs)) for section in md.SECTIONS]
    assert report == "\n".join(p for p in parts if p) + "\n"
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Runs",
        "## Performance: same vs base",
        "## Performance: slow vs base",
        "## Performance per run",
        "## Quality",
        "## Cost and capacity",
    ]
    # the ANOVA comes once, after every run's own section
    assert report.count("One-way ANOVA") == 1
    assert report.index("### slow / chat") < report.index("One-way ANOVA") < report.index("## Quality")


def test_console_and_unknown_formats(three_runs: AnalysisResult) -> None:
    console = Console(record=True, width=140)
    console.print(render(three_runs, "console"))
    text = console.export_text()
    assert "slow vs base" in text and "quality slow:" in text
    assert set(RENDERERS) >= {"markdown", "console", "json"}
    with pytest.raises(UnknownNameError, match="unknown report format 'pdf'"):
        render(three_runs, "pdf")


def test_a_written_summary_validates(tmp_path: Path) -> None:
    from agent.cli import main

    run = write_run(tmp_path / "one")
    out = tmp_path / "report"
    assert main(["analyze", str(run), "--out", str(out), "--no-progress", "--no-semscore", "--no-plots"]) == 0
    data = json.loads((out / "summary.json").read_text())
    result = AnalysisResult.model_validate(data)
    assert result.baseline is None and result.runs[0].label == "one" and result.figures == []


def test_the_itl_histogram_summed_over_chunks_is_numpy_and_matplotlib_s_own() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from analysis.quantiles import stream_stats
    from analysis.render.figures import gap_density

    rng = np.random.default_rng(3)
    parts = [rng.gamma(2.0, 4.0, size=n) for n in (1, 700, 5000, 0, 1234)]
    every = np.concatenate(parts)
    stats = stream_stats(lambda: iter(parts), [99.5])
    assert stats is not None and stats.n == every.size
    assert stats.percentiles[0] == float(np.percentile(every, 99.5))
    bins = np.linspace(0, stats.percentiles[0], 60)
    density = gap_density(lambda: iter(parts), bins)
    np.testing.assert_allclose(density, np.histogram(every, bins=bins, density=True)[0], rtol=1e-12)
    fig, ax = plt.subplots()
    drawn, _, _ = ax.hist(every, bins=bins, histtype="step", density=True)
    plt.close(fig)
    np.testing.assert_allclose(density, drawn, rtol=1e-12)
    assert not gap_density(lambda: iter([]), bins).any()
