"""The study file: validation with file and line, the cell plan and order, the hash, each cell's command."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.core.study import Cell, Study, cell_status, load_study
from agent.run.study import cell_argv, serve_argv

ROOT = Path(__file__).resolve().parents[4]
SMOKE = ROOT / "scenarios" / "studies" / "sim-smoke.yaml"

MINIMAL = """\
name: t
baseline: a
variants:
  a: {backend: sim}
  b: {backend: sim, args: {sim: {ttft_ms: 50}}}
scenarios: [chat, micro]
repetitions: 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_every_shipped_study_is_valid() -> None:
    for path in sorted((ROOT / "scenarios" / "studies").glob("*.yaml")):
        study = load_study(path)
        assert study.baseline in study.variants and study.cells()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (MINIMAL.replace("repetitions: 3", "repetitions: 0"), 7, "repetitions"),
        (MINIMAL.replace("baseline: a", "baseline: c"), 1, "baseline 'c' is not a variant"),
        (MINIMAL + "colour: red\n", 8, "colour"),
        (MINIMAL.replace("  b: {backend: sim,", "  b: {backend: sim, speed: 2,"), 5, "variants.b.speed"),
        (MINIMAL.replace("[chat, micro]", "[chat, chat]"), 1, "listed twice"),
        (MINIMAL.replace("name: t", "name: T!"), 1, "field 'name'"),
        (
            MINIMAL.replace("a: {backend: sim}", "a: {backend: sim, serve: {}}"),
            4,
            "use backend: openai or ollama",
        ),
        (
            MINIMAL.replace("a: {backend: sim}", "a: {backend: ollama, base_url: 'http://x', serve: {}}"),
            4,
            "drop base_url",
        ),
        (MINIMAL.replace("a: {backend: sim}", "a: {backend: ollama, serve: {slots: 0}}"), 4, "slots"),
    ],
)
def test_bad_studies_are_one_error_with_file_and_line(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert f"{path}:{line}" in str(e.value) and words in str(e.value)


def test_interleaved_order_is_a_seeded_shuffle_and_blocked_goes_variant_by_variant(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, MINIMAL))
    cells = study.cells()
    assert len(cells) == 2 * 2 * 3 and len(set(cells)) == 12
    assert cells == load_study(write(tmp_path, MINIMAL)).cells()  # the same seed, the same order
    other = load_study(write(tmp_path, MINIMAL + "seed: 5\n")).cells()
    assert sorted(other, key=str) == sorted(cells, key=str) and other != cells
    blocked = load_study(write(tmp_path, MINIMAL + "order: blocked\n")).cells()
    assert [c.variant for c in blocked] == ["a"] * 6 + ["b"] * 6
    assert blocked[0] == Cell("a", "chat", 1) and blocked[0].name == "a--chat--r1"


def test_the_hash_follows_the_content_not_the_file(tmp_path: Path) -> None:
    a = load_study(write(tmp_path, MINIMAL))
    b = load_study(write(tmp_path, "# a comment\n" + MINIMAL))
    c = load_study(write(tmp_path, MINIMAL.replace("ttft_ms: 50", "ttft_ms: 60")))
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_each_cell_is_an_ordinary_run_command(tmp_path: Path) -> None:
    study = load_study(SMOKE)
    argv = cell_argv(study, Cell("slow", "chat", 2), tmp_path / "cell")
    assert argv[1:5] == ["-m", "agent.cli", "run", "chat"]
    joined = " ".join(argv)
    assert "--backend sim" in joined and f"--out {tmp_path / 'cell'}" in joined
    assert '--backend-arg sim={"ttft_ms": 80, "itl_ms": 3, "model_name": "sim-slow"}' in joined
    assert "--requests 8" in joined and "--warmup 1" in joined and "--max-tokens 16" in joined


def test_a_served_variant_gets_its_server_command_and_the_cells_get_its_url(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "a: {backend: sim}",
        "a: {backend: ollama, model_path: m.gguf, serve: {slots: 2, threads: 3, requantize: Q4_0}}",
    )
    study = load_study(write(tmp_path, text))
    argv = serve_argv(study, "a")
    assert argv[1:6] == ["-m", "agent.cli", "serve", "--api", "ollama"]
    joined = " ".join(argv)
    assert "--port 0 --slots 2 --threads 3 --requantize Q4_0" in joined
    assert f"--model-path {(tmp_path / 'm.gguf').resolve()}" in joined  # the server serves the file
    cell = " ".join(cell_argv(study, Cell("a", "chat", 1), tmp_path / "c", "http://127.0.0.1:5"))
    assert "--backend ollama" in cell and "--base-url http://127.0.0.1:5" in cell
    assert "--model-path" not in cell


def test_a_cell_status_comes_from_its_manifest(tmp_path: Path) -> None:
    assert cell_status(tmp_path / "nothing") == "missing"
    (tmp_path / "manifest.json").write_text('{"status": "interrupted"}')
    assert cell_status(tmp_path) == "interrupted"
    (tmp_path / "manifest.json").write_text('{"status": "running"}')
    assert cell_status(tmp_path) == "failed"
    (tmp_path / "manifest.json").write_text("not json")
    assert cell_status(tmp_path) == "missing"


def test_relative_paths_resolve_from_the_study_file(tmp_path: Path) -> None:
    text = MINIMAL.replace("[chat, micro]", "[chat, mine.yaml]")
    study = Study.model_validate(
        {**load_study(write(tmp_path, text)).model_dump(), "source": str(tmp_path / "s.yaml")}
    )
    assert study.resolve("mine.yaml") == (tmp_path / "mine.yaml").resolve()
    assert study.resolve("chat") == "chat"


def test_a_variant_given_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nbaseline: a\nscenarios: [chat]\nvariants:\n  a: {backend: sim}\n  b: {backend: sim}\n"
        "  a: {backend: openai}\n"
    )
    with pytest.raises(ConfigError, match=r"key 'a' is given twice \(first on line 5\)") as e:
        load_study(path)
    assert e.value.location == f"{path}:7"


def test_energy_off_as_yaml_writes_it_is_the_word_off(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nbaseline: a\nscenarios: [chat]\nenergy: off\n"
        "variants: {a: {backend: sim}, b: {backend: sim}}\n"
    )
    assert load_study(path).energy == "off"
