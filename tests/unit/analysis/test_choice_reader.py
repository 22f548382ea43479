"""The multiple-choice reader against a large generated set of the ways models answer.

Every form a person reads as one letter is read as that letter, in every case and with the text around
it that models add; a repeated option list is never read as a choice; two letters with nothing to settle
them are ambiguous; nothing is read where a person reads nothing.
"""

from __future__ import annotations

import itertools

import pytest

from analysis.scorers import mc_accuracy, mc_readable, read_choice

OPTION = {"A": "Paris", "B": "London", "C": "Berlin", "D": "Rome", "E": "Madrid"}

#: forms that choose the letter {L} (lower case: {l}), the option's text {T}
FORMS = [
    "{L}",
    "{l}",
    "{L}.",
    "{l}.",
    "({L})",
    "({l})",
    "[{L}]",
    "{L})",
    "{l})",
    "{L}:",
    " {L} ",
    "**{L}**",
    "**{l}**",
    "*{L}*",
    "`{L}`",
    "**{L}.** {T}",
    "**({L})** {T}",
    "**{L}) {T}**",
    "\\boxed{{{L}}}",
    "$\\boxed{{{L}}}$",
    "\\(\\boxed{{\\text{{{L}}}}}\\)",
    "\\textbf{{{L}}}",
    "The answer is {L}.",
    "The answer is {L}",
    "the answer is ({l}).",
    "The answer is **{L}**.",
    "The answer is {L}: {T}.",
    "The answer is {L}) {T}",
    "The answer is option {L}.",
    "answer is [{L}]",
    "Answer: {L}",
    "Answer: {l}) {T}",
    "answer: ({l})",
    "Answer - {l}",
    "ANSWER: {L}",
    "Answer:{L}",
    "The correct answer is {L}: {T}.",
    "The correct answer is ({L}) {T}",
    "Correct option: {L}",
    "The right choice is {L}.",
    "The best answer would be {L}.",
    "The correct answer is option {l}.",
    "{L} is correct.",
    "({L}) is correct",
    "{L} is the correct answer because {T} fits.",
    "Option {L} is correct.",
    "Option {L} is the right one.",
    "option ({l}) is the best answer",
    "the answer must be {L}",
    "The answer should be {L}.",
    "The answer would be ({L}).",
    "I'd go with {L}.",
    "I choose {L}",
    "I would pick option {L}.",
    "I select ({l}).",
    "Final answer: {L}",
    "Final answer: **{L}**",
    "Final Answer: ({l})",
    "final answer is {L}.",
    "{L}) {T}",
    "({L}) {T} is the capital.",
    "{L}. {T}",
    "{l}. {T}",
    "{L}: {T}",
    "[{L}] {T}",
    "It is {L}.",
    "That's {L}.",
    "It's ({L}).",
    "It would be {L}.",
]
PREFIXES = ["", "Let me think step by step. The question asks for a capital city.\n\n", "Sure! ", "Hmm.\n"]
SUFFIXES = ["", "\n\nThis is because the city is well known.", "\n"]


def _cases(forms: list[str]) -> list[tuple[str, str]]:
    """Each form with every letter, every opening and every closing a model adds: (answer, letter)."""
    return [
        (prefix + form.format(L=letter, l=letter.lower(), T=text) + suffix, letter)
        for form, (letter, text), prefix, suffix in itertools.product(
            forms, OPTION.items(), PREFIXES, SUFFIXES
        )
    ]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reads_its_letter_in_any_context(form: str) -> None:
    for answer, letter in _cases([form]):
        got = read_choice(answer)
        assert (got.letter, got.status) == (letter, "read"), (answer, got)


def test_the_generated_set_is_large_and_every_answer_scores() -> None:
    cases = _cases(FORMS)
    assert len(cases) >= 3_000
    assert all(mc_accuracy(text, letter) == 1.0 and mc_readable(text) == 1.0 for text, letter in cases)
    # and never the wrong letter: each answer against every other letter scores 0
    assert not any(
        mc_accuracy(text, other) for text, letter in cases[::7] for other in OPTION if other != letter
    )


ECHOES = [
    "A. Paris\nB. London\nC. Berlin\nD. Rome",
    "A) Paris\nB) London\nC) Berlin\nD) Rome\n",
    "(A) Paris\n(B) London\n(C) Berlin\n(D) Rome",
    "A) Paris B) London C) Berlin D) Rome",
    "The options are:\nA. Paris\nB. London\nC. Berlin\nD. Rome",
    "- A: Paris\n- B: London\n- C: Berlin",
]


@pytest.mark.parametrize("answer", ECHOES)
def test_an_echoed_option_list_is_never_a_choice(answer: str) -> None:
    got = read_choice(answer)
    assert got.letter is None and got.status == "echoed", got
    assert mc_accuracy(answer, "A") == 0.0 and mc_readable(answer) == 0.0


@pytest.mark.parametrize("letter", "ABCD")
def test_a_choice_after_an_echoed_list_is_read(letter: str) -> None:
    for tail in (f"\n\nAnswer: {letter}", f"\nThe correct answer is {letter}.", f"\n\n**{letter}**"):
        answer = ECHOES[0] + tail
        assert read_choice(answer).letter == letter, answer


AMBIGUOUS = [
    "A or B",
    "Either (A) or (C).",
    "The answer is A. No, the answer is B.",
    "B) or D) could both be right",
    "I'd go with B, or maybe C.",
]


@pytest.mark.parametrize("answer", AMBIGUOUS)
def test_two_letters_with_nothing_to_settle_them_are_ambiguous(answer: str) -> None:
    got = read_choice(answer)
    assert got.letter is None and got.status == "ambiguous" and len(got.named) >= 2, got
    assert mc_accuracy(answer, got.named[0]) == 0.0


SETTLED = [
    ("The answer is A. Wait, let me reconsider. Final answer: B", "B"),
    ("The answer is not A, it is C.", "C"),
    ("A is wrong. B is correct.", "B"),
    ("Not (A). The answer is D.", "D"),
    ("Answer: B\n\nB is correct because London is the capital.", "B"),
    ("**Answer:** C) Berlin", "C"),
]


@pytest.mark.parametrize(("answer", "letter"), SETTLED)
def test_a_final_answer_or_a_ruled_out_letter_settles_it(answer: str, letter: str) -> None:
    assert read_choice(answer).letter == letter, read_choice(answer)


NOTHING = [
    "",
    "   ",
    "I don't know.",
    "Paris",
    "The answer is a good question to ask.",
    "A city in France is the answer.",
    "I think it depends on the context.",
    "Answer: Paris",
]


@pytest.mark.parametrize("answer", NOTHING)
def test_no_letter_where_a_person_reads_none(answer: str) -> None:
    got = read_choice(answer)
    assert got.letter is None and got.status == "none", got


def test_letters_past_the_options_are_not_read() -> None:
    assert read_choice("The answer is E.", letters="ABCD").letter is None
    assert read_choice("The answer is E.", letters="ABCDE").letter == "E"
