"""`infermeter analyze` on run directories written here: verdicts, drift, report, publishing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import main
from analysis.analyze import Options, analyze
from analysis.publish import build_registries
from analysis.runs import load_run, load_runs
from tests.unit.analysis.test_summary import rec

PROMPTS = [
    {"id": "q1", "text": "Capital of Japan?", "task": "qa", "reference": "The capital of Japan is Tokyo."},
    {"id": "q2", "text": "Red planet?", "task": "qa", "reference": "Mars is known as the Red Planet."},
    {"id": "m1", "text": "9*9? A) 18 B) 72 C) 81", "task": "multiple_choice", "reference": "C"},
]
ANSWERS = {"q1": "The capital of Japan is Tokyo.", "q2": "Mars is the Red Planet.", "m1": "The answer is C"}


def write_run(
    folder: Path, *, slow: float = 1.0, answers: dict[str, str] | None = None, n: int = 60, seed: int = 0
) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    answers = answers or ANSWERS
    ids = list(answers)
    lines = []
    for i in range(n):
        ttft = float(rng.lognormal(np.log(50 * slow), 0.2))
        e2e = ttft + float(rng.normal(500 * slow, 20))
        pid = ids[i % len(ids)]
        r = rec(
            i,
            e2e=e2e,
            ttft=ttft,
            prompt_id=pid,
            output_text=answers[pid],
            run_id=folder.name,
            prompt_tokens=20 + i % 7,
            output_tokens=32,
            wall_tok_s=32 / e2e * 1000,
        )
        lines.append(r.model_dump_json())
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {"scenario": {"name": "chat", "sha256": "ab" * 32, "normalised": {"prompts": PROMPTS}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_analyze_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base", seed=1)
    same = write_run(tmp_path / "same", seed=2)
    slow = write_run(tmp_path / "slow", slow=1.5, answers={**ANSWERS, "q1": "Kyoto", "m1": "B"}, seed=3)
    out = tmp_path / "report"
    textfile = tmp_path / "prom" / "infermeter.prom"
    code = main(
        [
            "analyze",
            str(same),
            str(slow),
            "--baseline",
            str(base),
            "--out",
            str(out),
            "--no-semscore",
            "--resamples",
            "500",
            "--usd-per-hour",
            "2",
            "--tokens-per-month",
            "1e9",
            "--no-progress",
            "--textfile",
            str(textfile),
            "--fail-on",
            "any",
        ]
    )
    assert code == 3  # slow is worse and drifted
    result = json.loads((out / "summary.json").read_text())
    assert result["schema_version"] == 1 and result["baseline"] == "base"
    assert result["verdicts"]["same"]["worse"] == 0
    assert result["verdicts"]["slow"]["worse"] >= 3
    slow_ttft = next(
        c for c in result["comparisons"]["slow"]["scenarios"]["chat"] if c["metric"] == "ttft_ms"
    )
    assert slow_ttft["verdict"] == "worse" and slow_ttft["change_pct"] > 30
    drift = result["quality"]["drift"]
    assert drift["same"]["tier"] == "negligible" and not drift["same"]["drifted"]
    assert drift["slow"]["tier"] == "unacceptable" and drift["slow"]["drifted"]
    assert result["quality"]["semscore_unavailable"].startswith("disabled")
    cost = result["cost"]["base"]["chat"]
    assert cost["usd_per_1m_output_tokens"] == pytest.approx(1e6 / cost["output_tok_s"] / 3600 * 2)
    assert result["anova"]["chat"]["ttft_ms"]["p"] < 0.05  # three runs, one slower
    report = (out / "report.md").read_text()
    assert "## Performance: slow vs base" in report and "**worse**" in report
    assert "outputs drifted, quality tier **unacceptable**" in report
    # every run gets its performance section, and the ANOVA across them comes once, after the last
    sections = [f"### {label} / chat" for label in ("base", "same", "slow")]
    assert all(report.count(head) == 1 for head in sections)
    anova = report.index("One-way ANOVA across all runs")
    assert report.count("One-way ANOVA across all runs") == 1 and all(
        report.index(h) < anova for h in sections
    )
    assert set(result["figures"]) == {
        "latency_cdf_chat.png",
        "itl_chat.png",
        "quality_deltas_same.png",
        "quality_deltas_slow.png",
    }
    for name in result["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    tiers = {
        (s.labels["candidate"], s.labels["task"]): s.value
        for s in families["infermeter_quality_tier"].samples
    }
    assert tiers[("slow", "all")] == 3.0 and tiers[("same", "all")] == 0.0
    verdicts = {
        s.labels["candidate"]: s.value
        for s in families["infermeter_regression_verdict"].samples
        if s.labels["metric"] == "ttft_ms"
    }
    assert verdicts == {"same": 0.0, "slow": 1.0}  # every candidate published, each under its own label
    printed = capsys.readouterr().out
    assert "slow vs base" in printed and "worse" in printed


def test_one_run_is_described_alone(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "only"))
    result = analyze([run], None, Options(resamples=200, semscore=False))
    assert result.quality is not None
    assert result.comparisons == {} and result.quality.drift == {}
    ttft = result.performance["only"]["chat"].metrics["ttft_ms"]
    assert ttft.median_ci is not None
    assert ttft.median_ci.low <= ttft.distribution.p50 <= ttft.median_ci.high
    fit = result.performance["only"]["chat"].scaling["ttft_ms_per_prompt_token"]
    assert fit.actionable is False  # TTFT does not depend on these prompt lengths
    mc = result.quality.runs["only"]["multiple_choice"].scorers["mc_accuracy"]
    assert mc is not None and mc.estimate == 1.0
    regs = build_registries(result, now=1.0)
    assert list(regs) == [("m", "only")]  # one group per candidate run


def test_daemon_samples_folder_reads_like_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    for name, seq in (("samples.2.jsonl", 0), ("samples.1.jsonl", 1), ("samples.jsonl", 2)):
        (folder / name).write_text(
            rec(seq, e2e=10.0, ttft=1.0, output_text="a b c d a b c d").model_dump_json()
        )
    run = load_run(folder)
    assert [r.seq for r in run.iter_records()] == [0, 1, 2]  # oldest rotation first
    result = analyze([run], None, Options(resamples=200, semscore=False))
    assert result.quality is None  # no prompt ids on these records: nothing to score by prompt


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "missing"), "--no-progress"]) == 2  # bad input, like a bad flag
    assert "does not exist" in capsys.readouterr().err
    a = write_run(tmp_path / "x" / "run")
    b = write_run(tmp_path / "y" / "run")
    assert main(["analyze", str(a), "--baseline", str(b), "--no-semscore", "--no-progress"]) == 2
    assert "distinct folder names" in capsys.readouterr().err
    broken = write_run(tmp_path / "broken")
    with (broken / "records.jsonl").open("a") as fh:
        fh.write("{not json\n")
    code = main(
        ["analyze", str(broken), "--no-semscore", "--no-progress", "--resamples", "200", "--no-plots"]
    )
    assert code == 0
    assert "skipped unreadable record" in capsys.readouterr().err
    assert (broken / "analysis" / "report.md").is_file()
    assert main(["analyze", str(broken), "--alpha", "0.7"]) == 2  # argparse's refusal: one line, exit 2
    assert capsys.readouterr().err.startswith("error: infermeter analyze: argument --alpha")


def test_references_file_overrides_the_manifest(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "r")
    refs = tmp_path / "refs.yaml"
    refs.write_text("- {id: q1, text: t, task: qa, reference: Tokyo}\n")
    run = load_run(run_dir, __import__("analysis.runs", fromlist=["read_references"]).read_references(refs))
    assert run.references["q1"].reference == "Tokyo"
    assert run.references["m1"].task == "multiple_choice"


def test_a_samples_folder_splits_by_target_and_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    rows = [
        rec(0, e2e=10.0, ttft=1.0, backend="llm-a", run_id="daemon-llm-a-11111111"),
        rec(1, e2e=10.0, ttft=1.0, backend="llm-b", run_id="daemon-llm-b-11111111"),
        rec(2, e2e=30.0, ttft=3.0, backend="llm-a", run_id="daemon-llm-a-22222222"),  # after a reload
        rec(3, e2e=10.0, ttft=1.0, backend="llm-a", run_id="daemon-llm-a-11111111"),
    ]
    (folder / "samples.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
    runs = load_runs(folder)
    assert [(r.label, [x.seq for x in r.iter_records()]) for r in runs] == [
        ("samples:llm-a@11111111", [0, 3]),
        ("samples:llm-b", [1]),
        ("samples:llm-a@22222222", [2]),
    ]
    assert main(["analyze", str(folder), "--baseline", str(folder), "--no-semscore", "--no-progress"]) == 2
    assert "holds several targets or configs" in capsys.readouterr().err


def test_out_over_someone_elses_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = write_run(tmp_path / "r")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (theirs / "report.md").write_text("their own report")
    args = ["analyze", str(run_dir), "--no-semscore", "--no-progress", "--resamples", "200", "--no-plots"]
    assert main([*args, "--out", str(theirs)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "nothing was overwritten" in err
    assert (theirs / "report.md").read_text() == "their own report"
    ours = tmp_path / "ours"
    assert main([*args, "--out", str(ours)]) == 0
    assert main([*args, "--out", str(ours)]) == 0  # an earlier analysis is rewritten
    assert sorted(p.name for p in ours.iterdir()) == ["report.html", "report.md", "summary.json"]


def test_a_report_that_cannot_be_written_leaves_the_old_one_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails part-way (a full disk) is one error line; the earlier files are intact."""
    import errno
    import os

    run_dir = write_run(tmp_path / "r")
    out = tmp_path / "out"
    args = ["analyze", str(run_dir), "--no-semscore", "--no-progress", "--resamples", "200", "--no-plots"]
    assert main([*args, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = os.write

    def full(fd: int, data: object) -> int:
        if os.fstat(fd).st_size > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[:50])  # type: ignore[index]

    monkeypatch.setattr(os, "write", full)
    code = main([*args, "--out", str(out)])
    monkeypatch.setattr(os, "write", real_write)
    assert code == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {out / 'summary.json'}: No space left on device"
    ]
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no half file, no *.tmp
