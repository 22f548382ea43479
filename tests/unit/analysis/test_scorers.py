"""Every scorer pinned against hand-computed values or the reference implementation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from analysis.scorers import (
    REGISTRY,
    SemScorer,
    bleu,
    exact_match,
    extract_choice,
    lcs_length,
    length_ratio,
    mc_accuracy,
    repetition,
    rouge_l,
    scorer,
)

WORDS = st.lists(
    st.sampled_from(["the", "cat", "Sat", "on", "a", "mat", "42", "x-y", "Über", "dog,"]), max_size=60
)
REFERENCE_ROUGE = rouge_scorer.RougeScorer(["rougeL"])


@settings(max_examples=400, deadline=None)
@given(WORDS, WORDS)
def test_rouge_l_equals_rouge_score(cand: list[str], ref: list[str]) -> None:
    c, r = " ".join(cand), " ".join(ref)
    assert rouge_l(c, r) == pytest.approx(REFERENCE_ROUGE.score(r, c)["rougeL"].fmeasure, abs=1e-12)


def test_rouge_l_by_hand() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 1, R = 0.5, F = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("The CAT!", "the cat") == 1.0


@given(st.lists(st.sampled_from("abcd"), max_size=40), st.lists(st.sampled_from("abcd"), max_size=40))
def test_bit_parallel_lcs_equals_the_table(a: list[str], b: list[str]) -> None:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    assert lcs_length(a, b) == table[-1][-1]


def test_bleu_by_hand() -> None:
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # precisions 3/4, 2/3, 1/2 and no 4-gram match (exp smoothing: 1 / (2 · 1)); equal lengths, BP = 1
    expected = (0.75 * (2 / 3) * 0.5 * 0.5) ** 0.25
    assert bleu("a b c d", "a b c e") == pytest.approx(expected)
    # a 2-token candidate has effective order 2: precisions 1 and 1, BP = exp(1 - 3/2)
    assert bleu("the cat", "the cat sat") == pytest.approx(math.exp(-0.5))
    # clipping: "the the the" against "the cat" matches "the" once; then no bigram (1 / (2 · 2)) and no
    # trigram (1 / (4 · 1)) match, each halving again; effective order 3
    expected = ((1 / 3) * (1 / (2 * 2)) * (1 / (4 * 1))) ** (1 / 3)
    assert bleu("the the the", "the cat") == pytest.approx(expected)
    assert bleu("", "x") == 0.0 and bleu("x", "") == 0.0 and bleu("a", "b") == 0.0
    assert bleu("return a+b", "return a + b") == bleu("return a + b", "return a + b")  # 13a splits a+b


def _perturbed_pairs(n: int) -> list[tuple[str, str]]:
    """References from the quality suite's sort of text, candidates edited the ways models drift."""
    import random

    rng = random.Random(13)
    words = [
        "the",
        "model",
        "returns",
        "a",
        "list",
        "of",
        "tokens",
        ",",
        "while",
        "decode",
        "(",
        "and",
        "prefill",
        ")",
        "take",
        "12.5",
        "ms",
        "each",
        ";",
        "Paris",
        "is",
        "the",
        "capital",
        "of",
        "France",
        ".",
        "x=1",
        "+",
        "y-2",
        "?",
        "it's",
        "3,000",
        "vs",
        "3.000",
        "--",
        "don't",
        '"quote"',
        "me",
        "/",
        "def",
        "f(a,",
        "b):",
        "return",
        "a+b",
        "#",
        "done",
        "!",
    ]
    pairs = []
    for _ in range(n):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 30))]
        cand = list(ref)
        for _ in range(rng.randint(0, 6)):
            op, i = rng.random(), rng.randrange(len(cand) + 1)
            if op < 0.3 and cand:
                cand.pop(min(i, len(cand) - 1))
            elif op < 0.6:
                cand.insert(i, rng.choice(words))
            elif cand:
                cand[min(i, len(cand) - 1)] = rng.choice(words)
        joiner = rng.choice([" ", " ", ""])  # glued punctuation is what tokenizers disagree on
        pairs.append((joiner.join(cand), " ".join(ref)))
    return pairs


def test_bleu_equals_sacrebleu_sentence_bleu() -> None:
    """The standard BLEU: the same number sacreBLEU gives (and HF evaluate's tokenizer), pair by pair."""
    import sacrebleu

    pairs = _perturbed_pairs(3000)
    differ = [
        (c, r) for c, r in pairs if abs(bleu(c, r) - sacrebleu.sentence_bleu(c, [r]).score / 100) > 1e-9
    ]
    assert differ == []
    assert len({round(bleu(c, r), 3) for c, r in pairs}) > 100  # the pairs span the scale, not one value


def test_exact_match_length_ratio_repetition() -> None:
    assert exact_match("  Positive\n", "positive") == 1.0
    assert exact_match("positive.", "positive") == 0.0
    assert length_ratio("one two", "one two three four") == 0.5
    assert length_ratio("", "") == 1.0
    assert length_ratio("", "a") == 0.0
    # 8 words, five 4-grams, "a b c d" twice: 4 unique / 5
    assert repetition("a b c d a b c d") == pytest.approx(0.8)
    assert repetition("too short") == 1.0
    assert repetition("x x x x x x") == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("B)", "B"),
        ("(C) because", "C"),
        ("The answer is B", "B"),
        ("Answer: B", "B"),
        ("answer: (b)", "B"),
        ("Answer - c", "C"),
        ("The correct answer is (D) Paris", "D"),
        ("I think it's D) the last one", "D"),
        ("It is A.", "A"),
        ("b. the second", "B"),
        ("The answer is a good one", None),
        ("Paris", None),
        ("", None),
    ],
)
def test_extract_choice(text: str, letter: str | None) -> None:
    assert extract_choice(text) == letter


def test_mc_accuracy_rescores_formatting() -> None:
    assert mc_accuracy("The answer is C.", "C") == 1.0
    assert mc_accuracy("(c)", "C") == 1.0
    assert mc_accuracy("B", "C") == 0.0
    assert mc_accuracy("I do not know", "C") == 0.0
    assert exact_match("The answer is C.", "C") == 0.0  # what raw exact match would have said


def test_registry_metadata() -> None:
    assert set(REGISTRY) == {
        "rouge_l",
        "bleu",
        "semscore",
        "exact_match",
        "length_ratio",
        "repetition",
        "mc_accuracy",
        "mc_readable",
    }
    assert all(s.higher_is_better for s in REGISTRY.values())
    assert REGISTRY["semscore"].batched and REGISTRY["semscore"].family == "semantic"
    assert REGISTRY["repetition"].needs == "none"
    with pytest.raises(KeyError, match="known: bleu"):
        scorer("bertscore")


@pytest.fixture(scope="module")
def sem() -> SemScorer:
    return SemScorer()


def test_semscore_orders_meaning(sem: SemScorer) -> None:
    same, para, other, empty = sem.score_pairs(
        ["Paris is the capital of France.", "The capital of France is Paris.", "I like green apples.", ""],
        ["Paris is the capital of France."] * 4,
    )
    assert same == pytest.approx(1.0, abs=1e-5)
    assert 0.8 < para < same
    assert other < 0.5
    assert empty == 0.0
    assert sem.score_pairs([], []) == []
    with pytest.raises(ValueError, match="differ in length"):
        sem.score_pairs(["a"], [])


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-5), ("auto", 2e-3)])
def test_semscore_batches_equal_singles(sem: SemScorer, precision: str, tol: float) -> None:
    cands = ["A dog runs in the park.", "The stock market fell today.", "Water boils at 100 degrees."]
    refs = [
        "A puppy is running on the grass.",
        "Shares dropped sharply.",
        "At sea level water boils at 100 C.",
    ]
    batched = SemScorer(precision=precision)  # type: ignore[arg-type]
    batch = batched.score_pairs(cands, refs)
    fresh = SemScorer(batch_size=1, precision="fp32")
    singles = [fresh.score_pairs([c], [r])[0] for c, r in zip(cands, refs, strict=True)]
    # bf16 weights (where the CPU has them) move cosines by about 1e-3 at most; float32 batches equal singles
    assert batch == pytest.approx(singles, abs=tol)


def test_semscore_workers_and_batches_keep_the_input_order() -> None:
    # lengths from 1 to 60 words, given longest first, so length sorting and batch cutting both reorder
    texts = [" ".join(f"w{j}" for j in range(n)) + f" item {n}" for n in range(60, 0, -1)]
    one = SemScorer(precision="fp32", workers=1, batch_size=64, batch_tokens=100_000)
    many = SemScorer(precision="fp32", workers=2, batch_size=4, batch_tokens=64)
    assert len(many._batches(texts)) > 10
    a, b = one.embed(texts), many.embed(texts)
    many.close()
    assert a.shape == (60, 384) and b.shape == (60, 384)
    assert abs(a - b).max() < 1e-4  # row i is text i on both paths (float32: padding changes nothing)
    neighbours = abs(a[1:] - a[:-1]).max(axis=1)
    assert neighbours.min() > 1e-3  # and every row differs from the next, so a swap would show
    assert one.embed([]).shape == (0, 384)


def test_semscore_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="batch_size and batch_tokens"):
        SemScorer(batch_tokens=0)
    with pytest.raises(ValueError, match="workers"):
        SemScorer(workers=0)
