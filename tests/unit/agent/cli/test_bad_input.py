"""Bad input never gives a traceback: each ends in one ``error:`` line and exit 2 before any run
directory exists; generated inputs end in 0, 1, 2 or 128 + n, never in an uncaught exception."""

from __future__ import annotations

import socket
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.core.errors import ConfigError
from agent.core.scenario import load_scenario

DOWN = ["--backend", "openai", "--base-url", "http://127.0.0.1:9", "--model", "m", "--no-progress"]


def scenario(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "s.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    return errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


BAD_SCENARIOS = {
    "no prompts": ("name: x\nprompts: []\nrequests: 2\n", "prompts"),
    "a blank prompt": ('name: x\nprompts: [""]\nrequests: 2\n', "prompts"),
    "a whitespace prompt": ('name: x\nprompts: ["  "]\nrequests: 2\n', "prompts"),
    "duration nan": ("name: x\nprompts: [hi]\nduration: .nan\n", "duration"),
    "duration inf": ("name: x\nprompts: [hi]\nduration: .inf\n", "duration"),
    "duration negative": ("name: x\nprompts: [hi]\nduration: -5\n", "duration"),
    "requests 1e29": ("name: x\nprompts: [hi]\nrequests: 1.0e+29\n", "requests"),
    "not utf-8": (b"name: x\nprompts: [\xff\xfe]\nrequests: 2\n", "UTF-8"),
    "think time nan": ("name: x\nprompts: [hi]\nload: {think_time: .nan}\n", "think_time"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENARIOS))
def test_a_bad_scenario_file_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, field = BAD_SCENARIOS[case]
    out = tmp_path / "run"
    assert main(["run", scenario(tmp_path, text), *DOWN, "--out", str(out)]) == 2
    assert field in one_error(capsys)
    assert not out.exists()


BAD_FLAGS = {
    "workers that are not a count": (["--workers", "many"], "--workers"),
    "more workers than closed-loop clients": (["--workers", "4", "--concurrency", "2"], "--concurrency 4"),
    "workers of an in-process backend": (
        ["--workers", "2", "--concurrency", "2", "--backend", "embedded"],
        "runs in this process",
    ),
    "a Ray address nothing answers at": (["--ray", "127.0.0.1:9"], "nothing answers there"),
    "a Ray address without a port": (["--ray", "headnode"], "HOST:PORT"),
    "backend arg that is not YAML": (["--backend-arg", "ttft_ms=[1"], "--backend-arg"),
    "think time that is not a duration": (["--think-time", "abc"], "--think-time"),
    "duration that is not a duration": (["--duration", "soon"], "duration"),
    "port out of range": (["--serve-metrics", "--metrics-port", "99999"], "65535"),
    "port that is not a number": (["--metrics-port", "http"], "port"),
    "requests past the bound": (["--requests", str(10**20)], "requests"),
    "concurrency zero": (["--concurrency", "0"], "concurrency"),
    "unbindable metrics host": (["--serve-metrics", "--metrics-host", "203.0.113.7"], "--metrics-host"),
    "a rate in a closed loop": (["--arrival", "closed", "--rate", "50"], "--rate shapes an open loop"),
    "an in-flight cap in a closed loop": (["--max-concurrency", "4"], "--max-concurrency"),
    "think time in an open loop": (["--rate", "5", "--think-time", "1s"], "--think-time"),
    "burstiness without gamma": (["--arrival", "poisson", "--rate", "5", "--burstiness", "0.5"], "gamma"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_a_bad_flag_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, expected = BAD_FLAGS[case]
    out = tmp_path / "run"
    assert main(["run", "micro", *DOWN, "--out", str(out), *flags]) == 2
    assert expected in one_error(capsys)
    assert not out.exists()


def test_a_metrics_port_in_use_is_one_line_before_any_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], busy_port: int
) -> None:
    out = tmp_path / "run"
    args = ["run", "micro", *DOWN, "--out", str(out), "--serve-metrics", "--metrics-port", str(busy_port)]
    assert main(args) == 2
    assert str(busy_port) in one_error(capsys)
    assert not out.exists()


def test_sweep_values_that_are_not_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["sweep", "micro", *DOWN, "--values", "a,b", "--out", str(out)]) == 2
    assert "--values" in one_error(capsys)
    assert not out.exists()


def test_out_naming_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.txt"
    target.write_text("mine\n")
    assert main(["run", "micro", *DOWN, "--out", str(target)]) == 2
    assert "not a directory" in one_error(capsys)
    assert target.read_text() == "mine\n"


def test_out_naming_a_directory_of_something_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    assert main(["run", "micro", *DOWN, "--out", str(tmp_path)]) == 2
    assert "not empty" in one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_summarize_on_a_corrupt_manifest_still_summarises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / "records.jsonl").write_text("")
    assert main(["summarize", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "manifest.json unreadable" in captured.err


def test_an_unfinished_run_of_ours_may_be_run_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"run_id": "x", "status": "failed"}')
    assert main(["run", "micro", *DOWN, "--requests", "1", "--warmup", "0", "--out", str(out)]) == 0
    assert (out / "records.jsonl").exists()


# ---- generated input -----------------------------------------------------------------------------

TEXT = st.text(string.printable, max_size=12)
NUMBER = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-1", "0", "1e29", "1.5", "2"]),
)
DURATION = st.one_of(TEXT, st.sampled_from(["0", "-1s", "1ms", "10ms", "abc", "nan", "1e400", "5 ms", ".5s"]))
VALUE = st.one_of(TEXT, NUMBER, st.none(), st.booleans(), st.lists(TEXT, max_size=3))

FLAGS: dict[str, st.SearchStrategy[str]] = {
    "--concurrency": NUMBER.map(str),
    "--max-tokens": NUMBER.map(str),
    "--think-time": DURATION,
    "--duration": DURATION,
    "--rate": NUMBER.map(str),
    "--burstiness": NUMBER.map(str),
    "--max-concurrency": NUMBER.map(str),
    "--arrival": st.sampled_from(["closed", "constant", "poisson", "gamma", "bursty", ""]),
    "--seed": NUMBER.map(str),
    "--slo-ttft-ms": NUMBER.map(str),
    "--metrics-port": NUMBER.map(str),
    "--backend-arg": st.tuples(TEXT, TEXT).map(lambda kv: f"{kv[0]}={kv[1]}"),
    "--metrics-linger": DURATION,
    "--lag-limit-ms": NUMBER.map(str),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.just(""), max_size=5).flatmap(
        lambda chosen: st.fixed_dictionaries({k: FLAGS[k] for k in chosen})
    )
)
def test_generated_command_lines_never_end_in_a_traceback(
    flags: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "micro", *DOWN, "--requests", "1", "--warmup", "0"]
    for flag, value in flags.items():
        argv += [flag, value] if flag != "--metrics-port" else ["--serve-metrics", flag, value]
    with tempfile.TemporaryDirectory() as d:
        try:
            code = main([*argv, "--out", str(Path(d) / "run")])
        except SystemExit as e:  # argparse's own refusal, before anything runs
            code = int(e.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code in (0, 1, 2) or code > 128, (argv, code, captured.err)


FIELDS = [
    "requests",
    "duration",
    "concurrency",
    "warmup",
    "cooldown",
    "output_tokens",
    "prompts",
    "load",
    "timeout",
    "keep_output_every",
    "max_output_chars",
    "prompt_tokens",
    "sweep",
    "agent",
    "batch",
]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), VALUE | st.dictionaries(TEXT, VALUE, max_size=3), max_size=6))
def test_generated_scenarios_load_or_fail_with_one_config_error(fields: dict[str, object]) -> None:
    data = {"name": "gen", "prompts": ["hello"], **fields}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gen.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            sc = load_scenario(path)
        except ConfigError as e:
            assert str(e).startswith(str(path))
            return
    assert sc.requests is not None or sc.duration is not None
    sc.config_hash()
    sc.prompt_list()


def _dataset(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "notes.txt").write_text("not a dataset")
    else:
        path.write_bytes(content)
    return path


BAD_DATASETS = {
    "missing columns": ("rows.jsonl", b'{"body": "no prompt here"}\n', "no prompt column"),
    "empty conversations": (
        "sg.json",
        b'[{"conversations": []}, {"conversations": []}]',
        "none with a usable",
    ),
    "not UTF-8": ("u.jsonl", b'{"prompt": "caf\xe9"}\n', "UTF-8"),
    "a 100 MB row": ("big.jsonl", b'{"prompt": "' + b"x" * (100 << 20) + b'"}\n', "MiB"),
    "a folder that is not a dataset": ("folder", None, "not a Hugging Face dataset"),
    "a file that is not there": ("missing.json", b"", "never fetches"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_a_bad_dataset_file_is_one_line_and_exit_2_before_any_run_directory(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, content, words = BAD_DATASETS[case]
    path = _dataset(tmp_path, name, content)
    if case == "a file that is not there":
        path.unlink()
    out = tmp_path / "run"
    assert main(["run", "chat", "--dataset", str(path), *DOWN, "--out", str(out)]) == 2
    assert words in one_error(capsys)
    assert not out.exists()


BAD_WORKLOAD_FLAGS = {
    "a length that is not one": (["--input-tokens", "lots"], "not a length"),
    "two workloads at once": (
        ["--input-tokens", "64", "--prefix-groups", "2", "--prefix-tokens", "8"],
        "give one",
    ),
    "a prefix without its size": (["--prefix-groups", "4"], "--prefix-tokens"),
    "a workload field on a prompt list": (["--sample", "5"], "--sample"),
    "an extra body that is not KEY=VALUE": (["--extra-body", "min_tokens"], "--extra-body"),
    "a weight that is not positive": (["--model-weight", "a=0"], "models"),
}


@pytest.mark.parametrize("case", sorted(BAD_WORKLOAD_FLAGS))
def test_a_bad_workload_flag_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, words = BAD_WORKLOAD_FLAGS[case]
    out = tmp_path / "run"
    assert main(["run", "chat", *flags, *DOWN, "--out", str(out)]) == 2
    assert words in one_error(capsys)
    assert not out.exists()


def test_a_secret_header_never_reaches_the_manifest_or_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    secret = "sk-header-secret-4711"
    flags = ["--header", f"Authorization=Bearer {secret}", "--header", "X-Tenant=blue", "--requests", "2"]
    main(["run", "micro", *flags, "--warmup", "0", *DOWN, "--energy", "off", "--out", str(out)])
    captured = capsys.readouterr()
    manifest = (out / "manifest.json").read_text()
    assert secret not in manifest and secret not in captured.err + captured.out
    assert "blue" in manifest  # an ordinary header is kept as given
    assert secret not in (out / "records.jsonl").read_text()
