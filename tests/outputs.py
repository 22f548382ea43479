"""What infermeter writes about recorded runs, held byte-equal from one change of its insides to the next.

``tests/data/recorded/`` holds run directories as the simulator recorded them (records, manifests,
chains, an energy trace, a study's cells) and nothing derived. Every command that derives something from
records runs on a copy of them here, and each file or console text it makes is compared with
``tests/data/recorded/expected/``: text files whole (a failure shows the diff), figures and HTML by
SHA-256. Only the wall-clock time of the analysis, the scratch folder's path and where this machine
installed its packages are masked.

A change that means to alter an output regenerates them, and the diff is reviewed with the change::

    python -m tests.outputs --update
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "recorded"
EXPECTED = RECORDED / "expected"
TEXT = (".txt", ".md", ".json", ".csv")

_QUIET = "--no-semscore --no-progress --seed 1"

#: (name of the console text, the command line); paths are relative to the scratch copy of the runs
COMMANDS: list[tuple[str, str]] = [
    ("summarize-a.txt", "summarize a"),
    ("summarize-a.json", "summarize --json a"),
    ("summarize-a-html.txt", "summarize --html a"),
    ("summarize-sweep.txt", "summarize sweep"),
    ("summarize-sweep-html.txt", "summarize --html sweep"),
    ("summarize-agent.txt", "summarize agent"),
    ("summarize-agent.json", "summarize --json agent"),
    ("summarize-energy.txt", "summarize energy"),
    ("summarize-energy.json", "summarize --json energy"),
    ("summarize-energy-html.txt", "summarize --html energy"),
    (
        "analyze-b-vs-a.txt",
        f"analyze b --baseline a --out analysis --resamples 2000 {_QUIET}",
    ),
    (
        "analyze-b-vs-a.json",
        f"analyze b --baseline a --out analysis-json --json --no-plots --resamples 2000 {_QUIET}",
    ),
    (
        "analyze-runs.txt",
        f"analyze sweep energy agent --out analysis-runs --no-plots --resamples 1000 {_QUIET}",
    ),
    ("study.txt", "study study.yaml --out study --no-progress"),
]

#: files the commands write, compared as well (relative to the scratch copy)
WRITTEN = [
    "a/report.html",
    "sweep/report.html",
    "energy/report.html",
    "analysis/report.md",
    "analysis/summary.json",
    "analysis/report.html",
    "analysis/latency_cdf_chat.png",
    "analysis/itl_chat.png",
    "analysis-runs/report.md",
    "analysis-runs/summary.json",
    "study/report.md",
    "study/report.html",
    "study/study.json",
]

_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}")
#: where this machine installed a package (a study names its embedding model's folder)
_INSTALLED = re.compile(r"[^\s\"']*/site-packages/")


def _mask(text: str, runs: Path) -> str:
    text = _INSTALLED.sub("<site-packages>/", text.replace(str(runs), "<runs>"))
    return _STAMP.sub("<created>", text)


_NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")
#: How far a printed float may move between releases of numpy and scipy (an F statistic or a p-value
#: they compute can change in its last digits); every other character is held exactly.
FLOAT_REL = 1e-9


def differences(kept: str, made: str) -> list[tuple[str, str]]:
    """The numbers that differ by more than ``FLOAT_REL``, or the whole texts if anything else differs."""
    if _NUMBER.sub("#", kept) != _NUMBER.sub("#", made):
        return [(kept, made)]
    out = []
    for a, b in zip(_NUMBER.findall(kept), _NUMBER.findall(made), strict=True):
        x, y = float(a), float(b)
        if a != b and abs(x - y) > FLOAT_REL * max(abs(x), abs(y)):
            out.append((a, b))
    return out


def produce(scratch: Path) -> dict[str, bytes]:
    """Run every command on a fresh copy of the recorded runs; each output's bytes, masked, by name."""
    runs = scratch / "runs"
    shutil.copytree(RECORDED, runs, ignore=shutil.ignore_patterns("expected"))
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}
    env["INFERMETER__CACHE_DIR"] = str(scratch / "cache")
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever is installed

    def one(args: str) -> bytes:
        res = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args.split()],
            cwd=runs,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        text = f"exit {res.returncode}\n--- stdout\n{res.stdout}--- stderr\n{res.stderr}"
        return _mask(text, runs).encode()

    # the commands read the recorded runs and each writes files of its own, so they run side by side
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        texts = list(pool.map(one, [args for _, args in COMMANDS]))
    out: dict[str, bytes] = {name: text for (name, _), text in zip(COMMANDS, texts, strict=True)}
    for rel in WRITTEN:
        data = (runs / rel).read_bytes()
        if rel.endswith((*TEXT, ".html")):
            data = _mask(data.decode(), runs).encode()
        out[rel.replace("/", "--")] = data
    return out


def digests(outputs: dict[str, bytes]) -> dict[str, str]:
    """SHA-256 of every output that is not kept as text."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in sorted(outputs.items()) if not k.endswith(TEXT)}


def update() -> None:
    """Write the expected outputs from what this checkout produces."""
    with tempfile.TemporaryDirectory() as tmp:
        outputs = produce(Path(tmp))
    shutil.rmtree(EXPECTED, ignore_errors=True)
    EXPECTED.mkdir()
    for name, data in outputs.items():
        if name.endswith(TEXT):
            (EXPECTED / name).write_bytes(data)
    (EXPECTED / "digests.json").write_text(json.dumps(digests(outputs), indent=2) + "\n")
    print(f"{len(outputs)} outputs written to {EXPECTED.relative_to(ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--update", action="store_true", help="rewrite the expected outputs")
    if parser.parse_args().update:
        update()
    else:
        parser.print_help()
