from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import ConfigError, UnknownNameError
from agent.core.scenario import list_builtin, load_scenario, parse_duration, resolve_scenario

BASE = """\
name: t
prompts:
  - Tell me about rivers.
  - Tell me about lakes.
requests: 4
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", list_builtin(), ids=lambda p: p.stem)
def test_every_builtin_scenario_validates(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    if sc.workload is not None:  # its prompts are made with the server's tokenizer at run time
        assert sc.prompts is None and sc.made is None
        return
    prompts = sc.prompt_list()
    assert prompts and len({p.id for p in prompts}) == len(prompts)


def test_builtin_library_is_complete() -> None:
    names = {p.stem for p in list_builtin()}
    assert {"chat", "agent_steps", "batch_prefill", "codegen", "long_context", "micro", "stress"} <= names


def test_unknown_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "sampling:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(path)
    msg = str(ei.value)
    assert f"{path}:7:" in msg and "sampling.temprature" in msg


def test_wrong_type_points_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "concurrency: lots\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(path)
    assert f"{path}:6" in str(ei.value) and "concurrency" in str(ei.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nprompts: [a, b\nrequests: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(path)
    assert str(path) in str(ei.value) and "invalid YAML" in str(ei.value)


def test_missing_prompt_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nprompts:\n  file: nowhere.yaml\nrequests: 2\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(path)
    assert f"{path}:3" in str(ei.value) and "nowhere.yaml" in str(ei.value)


def test_prompt_files_resolve_relative_and_keep_ids(tmp_path: Path) -> None:
    write(tmp_path, "- id: a1\n  text: first\n- second\n", "p.yaml")
    sc = load_scenario(write(tmp_path, "name: t\nprompts:\n  file: p.yaml\nrequests: 2\n"))
    assert [(p.id, p.text) for p in sc.prompt_list()] == [("a1", "first"), ("p-001", "second")]


def test_unbounded_run_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bounded"):
        load_scenario(write(tmp_path, "name: t\nprompts: [x]\nrequests: null\n"))


def test_overrides_validate_and_hash_changes(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE))
    faster = sc.with_overrides(concurrency=8, duration="30s", requests=None)
    assert faster.concurrency == 8 and faster.duration == 30.0 and faster.requests == 4
    assert faster.config_hash() != sc.config_hash()
    assert load_scenario(write(tmp_path, BASE, "again.yaml")).config_hash() == sc.config_hash()
    with pytest.raises(ConfigError, match="concurrency"):
        sc.with_overrides(concurrency=0)


def test_requests_cycle_prompts_with_chat_messages(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE + "system: be brief\nsampling: {temperature: 0, seed: 3}\n"))
    it = sc.requests_iter()
    reqs = [next(it) for _ in range(3)]
    assert [r.prompt_id for r in reqs] == ["t-000", "t-001", "t-000"]
    assert reqs[0].messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Tell me about rivers."},
    ]
    assert reqs[0].sampling == {"temperature": 0.0, "seed": 3}
    assert len({r.request_id for r in reqs}) == 3


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), (5, 5.0), ("1h", 3600.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_and_unknown_scenario() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(UnknownNameError, match="Did you mean 'chat'"):
        resolve_scenario("chta")


def test_a_derived_scenario_is_validated_like_a_file_and_keeps_its_source() -> None:
    """Every derived scenario (overrides, sweep stages, replays, daemon probes) goes through derive()."""
    base = load_scenario(resolve_scenario("chat"))
    stage = base.derive(base.normalised() | {"concurrency": 3}, location="sweep stage 3")
    assert stage.concurrency == 3 and stage.source == base.source
    with pytest.raises(
        ConfigError, match=r"^sweep stage 0: field 'concurrency': .*greater than or equal to 1"
    ):
        base.derive(base.normalised() | {"concurrency": 0}, location="sweep stage 0")


def test_the_shipped_corpus_is_the_prose_of_the_shipped_prompt_files() -> None:
    from agent.core.scenario import builtin_corpus, corpus_from_prompts

    assert builtin_corpus() == corpus_from_prompts()  # regenerate corpus.txt when a prompt file changes
