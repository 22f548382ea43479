"""Quality scoring and drift (method §6).

A run's kept outputs are scored against the references its scenario carries, with the scorers its task
group chooses. Drift compares a candidate run with a baseline run prompt by prompt: how similar the two
outputs are (ROUGE-L and SemScore of candidate vs baseline output, the identical-output rate) and how each
reference metric moved. The tier of a task is the worse of its benchmark delta (accuracy scorers, in
percentage points) and its generation delta (the key metric average, in per cent).
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from analysis.inference import bootstrap_ci
from analysis.results import Drift, KeyAverages, KlDrift, LeastSimilar, ScorerDrift, TaskDrift, TaskScores
from analysis.scorers import REGISTRY, SemScorer, rouge_l

__all__ = [
    "KEY_FAMILIES",
    "SIMILARITY_FLOOR",
    "TASK_SCORERS",
    "TIERS",
    "Reference",
    "Sample",
    "ScoreBook",
    "drift",
    "kl_first_tokens",
    "samples_of",
    "score_samples",
    "score_stream",
    "score_units",
    "task_scores",
    "tier_of",
]

#: method §6: which scorers each task group is judged by. "open" is an output without a reference.
TASK_SCORERS: dict[str, tuple[str, ...]] = {
    "summarization": ("rouge_l", "semscore", "length_ratio"),
    "qa": ("rouge_l", "semscore", "length_ratio"),
    "code": ("bleu", "rouge_l", "semscore"),
    "creative": ("semscore", "length_ratio", "repetition"),
    "classification": ("exact_match", "length_ratio"),
    "multiple_choice": ("mc_accuracy", "exact_match", "mc_readable"),
    "open": ("repetition",),
}
#: Below this mean ROUGE-L of candidate vs baseline output, the outputs count as drifted.
SIMILARITY_FLOOR = 0.9
#: The key metric average is the mean of the semantic and overlap scorers a task has.
KEY_FAMILIES = ("overlap", "semantic")

Tier = Literal["negligible", "acceptable", "concerning", "unacceptable"]
TIERS: tuple[Tier, ...] = ("negligible", "acceptable", "concerning", "unacceptable")
#: Lower bounds of each tier: benchmark delta in points, generation delta in per cent (method §6).
_POINTS = (-3.0, -5.0, -10.0)
_PERCENT = (-3.0, -8.0, -15.0)


@dataclass(frozen=True, slots=True)
class Reference:
    """What a prompt should produce and how it is judged."""

    task: str
    reference: str | None


@dataclass(slots=True)
class Sample:
    """One kept output with its scores."""

    prompt_id: str
    task: str
    request_id: str
    output: str
    reference: str | None
    scores: dict[str, float] = field(default_factory=dict)
    logprobs: list[dict[str, float]] | None = None


def tier_of(points: float | None = None, percent: float | None = None) -> Tier:
    """The worse tier of a benchmark delta (points) and a generation delta (%); no delta is negligible."""
    worst = 0
    for value, bounds in ((points, _POINTS), (percent, _PERCENT)):
        if value is None:
            continue
        level = next((i for i, bound in enumerate(bounds) if value >= bound), len(bounds))
        worst = max(worst, level)
    return TIERS[worst]


class Scored(Protocol):
    """What the scorers read of a record (a whole ``RequestRecord``, or the few fields read for it)."""

    @property
    def status(self) -> str: ...
    @property
    def is_warmup(self) -> bool: ...
    @property
    def request_id(self) -> str: ...
    @property
    def prompt_id(self) -> str | None: ...
    @property
    def output_text(self) -> str | None: ...
    @property
    def top_logprobs(self) -> list[dict[str, float]] | None: ...


def samples_of(records: Iterable[Scored], references: dict[str, Reference]) -> list[Sample]:
    """One sample per ok, non-warmup record that kept its output text, in record order.

    A prompt without a reference entry is an "open" output: only reference-free scorers apply.
    """
    return list(_each_sample(records, references))


def _each_sample(records: Iterable[Scored], references: dict[str, Reference]) -> Iterator[Sample]:
    for r in records:
        if r.status != "ok" or r.is_warmup or r.output_text is None or r.prompt_id is None:
            continue
        ref = references.get(r.prompt_id)
        task = ref.task if ref is not None and ref.reference is not None else "open"
        reference = ref.reference if ref else None
        yield Sample(r.prompt_id, task, r.request_id, r.output_text, reference, logprobs=r.top_logprobs)


def _needs_sem(s: Sample) -> bool:
    return s.reference is not None and "semscore" in TASK_SCORERS.get(s.task, ())


def score_units(samples: Sequence[Sample], semscorer: SemScorer | None) -> int:
    """How many progress steps :func:`score_samples` reports: one per sample, one per SemScore pair."""
    return len(samples) + (sum(1 for s in samples if _needs_sem(s)) if semscorer is not None else 0)


def score_samples(
    samples: Sequence[Sample],
    semscorer: SemScorer | None,
    *,
    advance: Callable[[int], None] | None = None,
    chunk: int = 256,
) -> list[Sample]:
    """Fill each sample's scores with its task's scorers; SemScore in batches, skipped without a model."""
    plans: dict[str, list[tuple[str, Callable[[str, str], float], bool]]] = {}
    for s in samples:
        plan = plans.get(s.task)
        if plan is None:  # each task's per-sample scorers, looked up once per call
            plan = plans[s.task] = [
                (name, sc.fn, sc.needs == "reference")
                for name in TASK_SCORERS.get(s.task, TASK_SCORERS["open"])
                if not (sc := REGISTRY[name]).batched and sc.fn is not None
            ]
        for name, fn, needs_reference in plan:
            if not (needs_reference and s.reference is None):
                s.scores[name] = fn(s.output, s.reference or "")
    if advance is not None:
        advance(len(samples))
    if semscorer is not None:
        sem_rows = [s for s in samples if _needs_sem(s)]
        for start in range(0, len(sem_rows), chunk):
            part = sem_rows[start : start + chunk]
            values = semscorer.score_pairs([s.output for s in part], [s.reference or "" for s in part])
            for s, v in zip(part, values, strict=True):
                s.scores["semscore"] = v
            if advance is not None:
                advance(len(part))
    return list(samples)


def _key(scores: dict[str, float]) -> float | None:
    keys = [v for k, v in scores.items() if REGISTRY[k].family in KEY_FAMILIES]
    return float(np.mean(keys)) if keys else None


@dataclass(slots=True)
class _TaskBook:
    """One task group's scores, in record order: each scorer's values, each key average, the prompts."""

    n: int = 0
    values: dict[str, array[float]] = field(default_factory=dict)
    keys: array[float] = field(default_factory=lambda: array("d"))
    prompts: set[str] = field(default_factory=set)


class ScoreBook:
    """A run's scored outputs kept as numbers: scoring a million of them keeps only each prompt's first text.

    Per task group: every scorer's values and every key average, in record order (what
    :func:`task_scores` resamples). Per prompt: its first sample whole (what :func:`drift` pairs).
    """

    __slots__ = ("_first", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[str, _TaskBook] = {}
        self._first: dict[str, Sample] = {}

    def add(self, s: Sample) -> None:
        """Enter one scored sample."""
        book = self._tasks.get(s.task)
        if book is None:
            book = self._tasks[s.task] = _TaskBook()
        book.n += 1
        book.prompts.add(s.prompt_id)
        for name, value in s.scores.items():
            column = book.values.get(name)
            if column is None:
                column = book.values[name] = array("d")
            column.append(value)
        if (k := _key(s.scores)) is not None:
            book.keys.append(k)
        self._first.setdefault(s.prompt_id, s)

    def __len__(self) -> int:
        return sum(b.n for b in self._tasks.values())

    def has_prompt(self, prompt_id: str) -> bool:
        """Whether a sample of ``prompt_id`` is in already."""
        return prompt_id in self._first

    def first_samples(self) -> list[Sample]:
        """Each prompt's first sample, in the order the prompts first came."""
        return list(self._first.values())

    def task_scores(self, *, resamples: int, seed: int) -> dict[str, TaskScores]:
        """Per task: every scorer's mean with a bootstrap CI, the key metric average, sample count."""
        out: dict[str, TaskScores] = {}
        for task, book in sorted(self._tasks.items()):
            scorers = {
                name: bootstrap_ci(np.frombuffer(book.values[name]), "mean", resamples=resamples, seed=seed)
                for name in sorted(book.values)
            }
            keys = np.frombuffer(book.keys)
            out[task] = TaskScores(
                n=book.n,
                scorers=scorers,
                key_average=bootstrap_ci(keys, "mean", resamples=resamples, seed=seed) if len(keys) else None,
                prompts=len(book.prompts),
            )
        return out


def score_stream(
    records: Iterable[Scored],
    references: dict[str, Reference],
    semscorer: SemScorer | None,
    *,
    advance: Callable[[int], None] | None = None,
    chunk: int = 256,
    book: ScoreBook | None = None,
) -> ScoreBook:
    """Score the kept outputs of ``records`` as they stream, ``chunk`` at a time, into ``book`` (or a new).

    ``advance(n)`` is told of every ok steady record read, whether or not it kept its text, ``chunk`` or
    so at a time.
    """
    book = book if book is not None else ScoreBook()
    part: list[Sample] = []

    def flush() -> None:
        score_samples(part, semscorer)
        for s in part:
            if book.has_prompt(s.prompt_id):  # only a prompt's first sample keeps its text
                s.output, s.logprobs = "", None
            book.add(s)
        part.clear()

    read = 0  # ok steady records read and not yet told to ``advance`` (told a chunk at a time)
    for r in records:
        if r.status == "ok" and not r.is_warmup:
            read += 1
            part.extend(_each_sample((r,), references))
            if len(part) >= chunk:
                flush()
            if read >= chunk and advance is not None:
                advance(read)
                read = 0
    flush()
    if read and advance is not None:
        advance(read)
    return book


def task_scores(samples: Sequence[Sample], *, resamples: int, seed: int) -> dict[str, TaskScores]:
    """Per task: every scorer's mean with a bootstrap CI, the key metric average, sample count."""
    book = ScoreBook()
    for s in samples:
        book.add(s)
    return book.task_scores(resamples=resamples, seed=seed)


def _first_per_prompt(samples: Sequence[Sample]) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    for s in samples:
        out.setdefault(s.prompt_id, s)
    return out


def drift(
    baseline: Sequence[Sample],
    candidate: Sequence[Sample],
    semscorer: SemScorer | None,
    *,
    resamples: int,
    seed: int,
    worst: int = 5,
    similarity_floor: float = SIMILARITY_FLOOR,
) -> Drift:
    """Candidate vs baseline on the prompts both answered (the first output of each prompt in each run).

    Per task: output-vs-output ROUGE-L and SemScore, identical-output rate, each scorer's mean in both runs
    with the paired delta and its bootstrap CI, the benchmark and generation deltas, and the tier.

    ``drifted`` says the outputs themselves moved (mean output-vs-baseline ROUGE-L under
    ``similarity_floor``), whichever way quality went; the tier says how far quality fell.
    """
    base, cand = _first_per_prompt(baseline), _first_per_prompt(candidate)
    shared = [pid for pid in base if pid in cand]
    pairs = [(base[p], cand[p]) for p in shared]
    sims_rouge = [rouge_l(c.output, b.output) for b, c in pairs]
    sims_sem = (
        semscorer.score_pairs([c.output for _, c in pairs], [b.output for b, _ in pairs])
        if (semscorer is not None and pairs)
        else None
    )
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, (b, _) in enumerate(pairs):
        by_task[b.task].append(i)
    tasks: dict[str, TaskDrift] = {}
    for task, idx in sorted(by_task.items()):
        tasks[task] = _task_drift(
            similarity_floor,
            task,
            [pairs[i] for i in idx],
            [sims_rouge[i] for i in idx],
            None if sims_sem is None else [sims_sem[i] for i in idx],
            resamples=resamples,
            seed=seed,
        )
    overall = max((TIERS.index(t.tier) for t in tasks.values() if t.tier is not None), default=None)
    sim = _similarity(pairs, sims_rouge, sims_sem, similarity_floor)
    return Drift(
        drifted=sim.drifted,
        tier=None if overall is None else TIERS[overall],
        prompts_shared=len(shared),
        identical_rate=sim.identical_rate,
        output_rouge_l=sim.output_rouge_l,
        output_semscore=sim.output_semscore,
        kl_first_tokens=sim.kl_first_tokens,
        tasks=tasks,
        least_similar=_least_similar(pairs, sims_rouge, worst),
        similarity_floor=similarity_floor,
        prompts_baseline=len(base),
        prompts_candidate=len(cand),
        only_in_baseline=sorted(set(base) - set(cand)),
        only_in_candidate=sorted(set(cand) - set(base)),
        tier_level=overall,
    )


def _least_similar(
    pairs: Sequence[tuple[Sample, Sample]], sims: list[float], worst: int
) -> list[LeastSimilar]:
    """The ``worst`` pairs whose outputs differ most (lowest ROUGE-L), each output cut at 300 characters."""
    order = sorted(range(len(pairs)), key=lambda i: sims[i])[:worst]
    return [
        LeastSimilar(
            prompt_id=pairs[i][0].prompt_id,
            task=pairs[i][0].task,
            output_rouge_l=sims[i],
            baseline=pairs[i][0].output[:300],
            candidate=pairs[i][1].output[:300],
        )
        for i in order
        if pairs[i][0].output != pairs[i][1].output
    ]


@dataclass(frozen=True, slots=True)
class _Similarity:
    """How far the candidate's outputs moved from the baseline's (for a whole run or one task)."""

    kl_first_tokens: KlDrift | None
    drifted: bool
    identical_rate: float | None
    output_rouge_l: float | None
    output_semscore: float | None


def _similarity(
    pairs: Sequence[tuple[Sample, Sample]],
    sims_rouge: list[float],
    sims_sem: list[float] | None,
    floor: float,
) -> _Similarity:
    similarity = _mean(sims_rouge)
    return _Similarity(
        kl_first_tokens=_kl(pairs),
        drifted=similarity is not None and similarity < floor,
        identical_rate=_mean([float(b.output == c.output) for b, c in pairs]),
        output_rouge_l=similarity,
        output_semscore=_mean(sims_sem),
    )


def _kl(pairs: Sequence[tuple[Sample, Sample]]) -> KlDrift | None:
    """Mean and max over prompts of KL(baseline ‖ candidate) on the first tokens, where both kept logprobs."""
    values = [
        v
        for b, c in pairs
        if b.logprobs and c.logprobs and (v := kl_first_tokens(b.logprobs, c.logprobs)) is not None
    ]
    if not values:
        return None
    return KlDrift(mean=float(np.mean(values)), max=float(np.max(values)), prompts=len(values))


def _mean(values: Sequence[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _task_drift(
    similarity_floor: float,
    task: str,
    pairs: list[tuple[Sample, Sample]],
    sims_rouge: list[float],
    sims_sem: list[float] | None,
    *,
    resamples: int,
    seed: int,
) -> TaskDrift:
    scorers: dict[str, ScorerDrift] = {}
    names = sorted({k for b, c in pairs for k in b.scores if k in c.scores})
    points: float | None = None
    for name in names:
        bv = [b.scores[name] for b, c in pairs if name in b.scores and name in c.scores]
        cv = [c.scores[name] for b, c in pairs if name in b.scores and name in c.scores]
        diff = bootstrap_ci(np.subtract(cv, bv), "mean", resamples=resamples, seed=seed)
        scorers[name] = ScorerDrift(baseline=float(np.mean(bv)), candidate=float(np.mean(cv)), delta=diff)
        if REGISTRY[name].family == "accuracy":
            delta_points = (float(np.mean(cv)) - float(np.mean(bv))) * 100
            points = delta_points if points is None else min(points, delta_points)
    key_b = [k for b, c in pairs if (k := _key({n: b.scores[n] for n in names if n in b.scores})) is not None]
    key_c = [k for b, c in pairs if (k := _key({n: c.scores[n] for n in names if n in c.scores})) is not None]
    percent: float | None = None
    if key_b and key_c and np.mean(key_b) > 0:
        percent = (float(np.mean(key_c)) / float(np.mean(key_b)) - 1) * 100
    has_reference = any(b.reference is not None for b, _ in pairs)
    sim = _similarity(pairs, sims_rouge, sims_sem, similarity_floor)
    return TaskDrift(
        n=len(pairs),
        identical_rate=sim.identical_rate,
        output_rouge_l=sim.output_rouge_l,
        scorers=scorers,
        benchmark_delta_points=points,
        generation_delta_pct=percent,
        tier=tier_of(points, percent) if has_reference and task != "open" else None,
        kl_first_tokens=sim.kl_first_tokens,
        drifted=sim.drifted,
        output_semscore=sim.output_semscore,
        key_average=KeyAverages(baseline=_mean(key_b), candidate=_mean(key_c)),
    )


def kl_first_tokens(
    baseline: Sequence[dict[str, float]], candidate: Sequence[dict[str, float]]
) -> float | None:
    """Mean KL(P_baseline ‖ P_candidate) over the first token positions, from top-k logprobs.

    Each position is a ``{token: logprob}`` map of the top-k alternatives. Positions count up to and
    including the first where the two runs' greedy choices (each map's most likely token) differ: after
    it, the runs continue from different prefixes and their distributions are not comparable. Both
    distributions live on the
    union of their top-k tokens plus one "other" bucket; a token missing from one side's top-k gets an
    even share of that side's tail mass (1 − Σ top-k), floored at 1e-10. Identical top-k maps give 0.
    None when no position can be compared.
    """
    n = min(len(baseline), len(candidate))
    total, count = 0.0, 0
    for i in range(n):
        p_top, q_top = baseline[i], candidate[i]
        if not p_top or not q_top:
            break
        support = sorted(set(p_top) | set(q_top))
        p = _spread(p_top, support)
        q = _spread(q_top, support)
        total += float(np.sum(p * np.log(p / q)))
        count += 1
        if max(q_top, key=q_top.__getitem__) != max(p_top, key=p_top.__getitem__):
            break  # the runs took different tokens here: later positions have other contexts
    return total / count if count else None


def _spread(top: dict[str, float], support: list[str]) -> np.ndarray:
    probs = {t: float(np.exp(lp)) for t, lp in top.items()}
    tail = max(1.0 - sum(probs.values()), 0.0)
    missing = [t for t in support if t not in probs]
    share = tail / (len(missing) + 1)
    out = np.array([probs.get(t, share) for t in support] + [share])
    out = np.maximum(out, 1e-10)
    return np.asarray(out / out.sum())
