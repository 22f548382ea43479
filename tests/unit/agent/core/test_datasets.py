"""Dataset files read into conversations: every layout the field uses, and one clear error for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.datasets import MAX_ROW_BYTES, Columns, read_dataset
from agent.core.errors import ConfigError

SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi there"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "How are you?"},
            {"from": "gpt", "value": "Well, thanks."},
        ],
    },
    {"id": "b", "conversations": [{"from": "human", "value": "Only a question"}]},
    {"id": "c", "conversations": []},
    {
        "id": "d",
        "conversations": [{"from": "gpt", "value": "an answer first"}, {"from": "human", "value": "x"}],
    },
    {"id": "e", "conversations": [{"from": "human", "value": "one"}, {"from": "human", "value": "two"}]},
]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_sharegpt_turns_answers_and_system_are_read_and_broken_conversations_cut_or_skipped(
    tmp_path: Path,
) -> None:
    ds = read_dataset(write_json(tmp_path / "sg.json", SHAREGPT))
    by_id = {c.id: c for c in ds.conversations}
    a = by_id["a"]
    assert a.system == "Be brief." and [t.text for t in a.turns] == ["Hi there", "How are you?"]
    assert [t.answer for t in a.turns] == ["Hello!", "Well, thanks."]
    assert [t.text for t in by_id["b"].turns] == ["Only a question"] and by_id["b"].turns[0].answer is None
    assert [t.text for t in by_id["e"].turns] == ["one"]  # cut where a second user turn comes unanswered
    assert set(by_id) == {"a", "b", "e"} and ds.skipped == {"empty": 2}
    ident = ds.identity()
    assert ident["rows"] == 5 and ident["conversations"] == 3 and len(ident["sha256"]) == 64


def test_openai_messages_in_jsonl_are_conversations_too(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    rows = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (conv,) = read_dataset(path).conversations
    assert conv.turns[0].text == "q1" and conv.turns[0].answer == "a1"


def test_rows_with_a_column_mapping_and_turns_grouped_by_conversation(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "session,n,t,question,reply,budget\n"
        "s1,2,12.5,second,r2,40\n"
        "s1,1,10.0,first,r1,30\n"
        "s2,1,0,alone,r3,\n",
        encoding="utf-8",
    )
    cols = Columns(
        prompt="question",
        answer="reply",
        conversation="session",
        turn="n",
        timestamp="t",
        output_tokens="budget",
    )
    ds = read_dataset(path, columns=cols)
    s1 = next(c for c in ds.conversations if c.id == "s1")
    assert [t.text for t in s1.turns] == ["first", "second"]
    assert [t.output_tokens for t in s1.turns] == [30, 40]
    assert s1.turns[0].think_s is None and s1.turns[1].think_s == pytest.approx(2.5)


def test_common_prompt_column_names_are_found_without_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Why is the sky blue?", "answer": "Rayleigh scattering."}\n')
    (conv,) = read_dataset(path).conversations
    assert conv.turns[0].text.startswith("Why") and conv.turns[0].answer == "Rayleigh scattering."


def test_parquet_and_a_saved_hugging_face_dataset_are_read(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = {"prompt": ["p one", "p two", "p three"], "output_tokens": [4, 5, 6]}
    ds = datasets.Dataset.from_dict(data)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "files").mkdir()
    ds.to_parquet(str(tmp_path / "files" / "train.parquet"))
    cols = Columns(output_tokens="output_tokens")
    for path in (tmp_path / "d.parquet", tmp_path / "saved", tmp_path / "files"):
        got = read_dataset(path, columns=cols)
        assert [c.turns[0].text for c in got.conversations] == data["prompt"], path
        assert [c.turns[0].output_tokens for c in got.conversations] == [4, 5, 6]


BAD = {
    "missing column": (lambda p: p.write_text('{"body": "x"}\n'), "t.jsonl", "no prompt column"),
    "only empty conversations": (
        lambda p: write_json(p, [{"conversations": []}] * 3),
        "e.json",
        "none with a usable",
    ),
    "an empty file": (lambda p: p.write_text(""), "z.jsonl", "no rows"),
    "not UTF-8": (lambda p: p.write_bytes(b'{"prompt": "caf\xe9"}\n'), "u.jsonl", "UTF-8"),
    "not JSON": (lambda p: p.write_text('{"prompt": \n'), "j.jsonl", "not JSON"),
    "a JSON scalar": (lambda p: write_json(p, 42), "s.json", "list of rows"),
    "a prompt that is a list": (lambda p: p.write_text('{"prompt": [1, 2]}\n'), "l.jsonl", "not text"),
    "a bad token count": (lambda p: p.write_text("prompt,n\nhi,-3\n"), "n.csv", "whole number"),
    "an unknown suffix": (lambda p: p.write_text("x"), "d.txt", "cannot tell the format"),
    "not parquet": (lambda p: p.write_text("not parquet"), "p.parquet", "Parquet"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_dataset_is_one_error_naming_the_file(case: str, tmp_path: Path) -> None:
    make, name, words = BAD[case]
    path = tmp_path / name
    make(path)
    cols = Columns(output_tokens="n") if name == "n.csv" else None
    with pytest.raises(ConfigError, match=words) as e:
        read_dataset(path, columns=cols)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name", ["big.jsonl", "big.csv", "big.json"])
def test_a_row_past_the_limit_is_refused_without_reading_it_whole(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    huge = "x" * (100 * 1024 * 1024)  # a 100 MB row
    if name.endswith(".jsonl"):
        path.write_text('{"prompt": "ok"}\n{"prompt": "' + huge + '"}\n')
    elif name.endswith(".csv"):
        path.write_text('prompt\nok\n"' + huge + '"\n')
    else:
        write_json(path, [{"prompt": "ok"}, {"prompt": huge}])
    with pytest.raises(ConfigError, match=f"{MAX_ROW_BYTES >> 20} MiB"):
        read_dataset(path)


def test_a_folder_that_is_not_a_dataset_and_a_missing_file_say_what_to_do(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not a Hugging Face dataset on disk"):
        read_dataset(tmp_path / "notes")
    with pytest.raises(ConfigError, match="never fetches"):
        read_dataset(tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json")
