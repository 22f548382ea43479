"""What an inference server says about itself on its Prometheus endpoint, in common concepts.

Each engine names the same things differently: vLLM's ``vllm:num_requests_waiting`` is SGLang's
``sglang:num_queue_reqs``, TGI's ``tgi_queue_size`` and llama.cpp's ``llamacpp:requests_deferred``. The
``ENGINES`` table maps each engine's series onto one set of concepts (requests running and waiting,
KV-cache usage, prefix-cache queries and hits, preemptions, token counters, the server's own TTFT, ITL
and E2E histograms). A scrape keeps the mapped series and every other gauge and counter raw; the
buckets of histograms nobody maps are dropped, as they are most of an exposition's size.

The scrapes go to ``server_metrics.csv`` in the run directory, one row per series whenever its value
changed (``t_unix,endpoint,name,labels,value``): a value holds until the next row for the same series,
and every scrape at a stage boundary writes every series, so a window's first and last values are
always on file. ``read_series`` and ``window_figures`` turn that file back into per-window figures.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.core.errors import ConfigError

__all__ = [
    "CONCEPTS",
    "ENGINES",
    "FILE_HEADER",
    "Concept",
    "Sample",
    "SeriesFile",
    "SeriesSpec",
    "detect_engine",
    "gauge_over_time",
    "label_pairs",
    "label_text",
    "parse_exposition",
    "read_series",
    "series_spec",
    "window_figures",
]

Concept = Literal[
    "running",
    "waiting",
    "kv_usage",
    "prefix_queries",
    "prefix_hits",
    "prefix_hit_rate",
    "preemptions",
    "prompt_tokens",
    "cached_prompt_tokens",
    "generation_tokens",
    "ttft",
    "itl",
    "e2e",
    "queue_time",
]

#: what each concept means, for the docs and the summary's words
CONCEPTS: dict[str, str] = {
    "running": "requests the server is running now (gauge)",
    "waiting": "requests queued, not yet scheduled (gauge)",
    "kv_usage": "fraction of the KV cache in use, 0-1 (gauge)",
    "prefix_queries": "prompt tokens looked up in the prefix cache (counter)",
    "prefix_hits": "prompt tokens found in the prefix cache (counter)",
    "prefix_hit_rate": "the server's own prefix-cache hit rate, 0-1 (gauge)",
    "preemptions": "requests preempted or retracted to free KV cache (counter)",
    "prompt_tokens": "prompt tokens computed (counter)",
    "cached_prompt_tokens": "prompt tokens served from the cache instead (counter)",
    "generation_tokens": "tokens generated (counter)",
    "ttft": "the server's time to first token, seconds (histogram)",
    "itl": "the server's time between output tokens, seconds (histogram)",
    "e2e": "the server's request latency, seconds (histogram)",
    "queue_time": "time requests waited in the server's queue, seconds (histogram)",
}

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One engine's series for one concept: the family name (a counter's without ``_total``)."""

    engine: str
    concept: Concept
    name: str
    kind: Kind


def _specs(engine: str, rows: Iterable[tuple[Concept, str, Kind]]) -> tuple[SeriesSpec, ...]:
    return tuple(SeriesSpec(engine, c, n, k) for c, n, k in rows)


#: Where a concept has two names, the first is the engine's current one and the second an older one.
ENGINES: dict[str, tuple[SeriesSpec, ...]] = {
    "vllm": _specs(
        "vllm",
        [
            ("running", "vllm:num_requests_running", "gauge"),
            ("waiting", "vllm:num_requests_waiting", "gauge"),
            ("kv_usage", "vllm:kv_cache_usage_perc", "gauge"),
            ("kv_usage", "vllm:gpu_cache_usage_perc", "gauge"),
            ("prefix_queries", "vllm:prefix_cache_queries", "counter"),
            ("prefix_queries", "vllm:gpu_prefix_cache_queries", "counter"),
            ("prefix_hits", "vllm:prefix_cache_hits", "counter"),
            ("prefix_hits", "vllm:gpu_prefix_cache_hits", "counter"),
            ("preemptions", "vllm:num_preemptions", "counter"),
            ("prompt_tokens", "vllm:prompt_tokens", "counter"),
            ("cached_prompt_tokens", "vllm:prompt_tokens_cached", "counter"),
            ("generation_tokens", "vllm:generation_tokens", "counter"),
            ("ttft", "vllm:time_to_first_token_seconds", "histogram"),
            ("itl", "vllm:inter_token_latency_seconds", "histogram"),
            ("itl", "vllm:time_per_output_token_seconds", "histogram"),
            ("e2e", "vllm:e2e_request_latency_seconds", "histogram"),
            ("queue_time", "vllm:request_queue_time_seconds", "histogram"),
        ],
    ),
    "sglang": _specs(
        "sglang",
        [
            ("running", "sglang:num_running_reqs", "gauge"),
            ("waiting", "sglang:num_queue_reqs", "gauge"),
            ("kv_usage", "sglang:token_usage", "gauge"),
            ("prefix_hit_rate", "sglang:cache_hit_rate", "gauge"),
            ("preemptions", "sglang:num_retracted_requests", "counter"),
            ("prompt_tokens", "sglang:prompt_tokens", "counter"),
            ("cached_prompt_tokens", "sglang:cached_tokens", "counter"),
            ("generation_tokens", "sglang:generation_tokens", "counter"),
            ("ttft", "sglang:time_to_first_token_seconds", "histogram"),
            ("itl", "sglang:inter_token_latency_seconds", "histogram"),
            ("itl", "sglang:time_per_output_token_seconds", "histogram"),
            ("e2e", "sglang:e2e_request_latency_seconds", "histogram"),
            ("queue_time", "sglang:queue_time_seconds", "histogram"),
        ],
    ),
    "tgi": _specs(
        "tgi",
        [
            ("running", "tgi_batch_current_size", "gauge"),
            ("waiting", "tgi_queue_size", "gauge"),
            ("e2e", "tgi_request_duration", "histogram"),
            ("itl", "tgi_request_mean_time_per_token_duration", "histogram"),
            ("queue_time", "tgi_request_queue_duration", "histogram"),
        ],
    ),
    # llama.cpp's server (--metrics): its prompt counter leaves out the tokens it took from the cache
    "llamacpp": _specs(
        "llamacpp",
        [
            ("running", "llamacpp:requests_processing", "gauge"),
            ("waiting", "llamacpp:requests_deferred", "gauge"),
            ("kv_usage", "llamacpp:kv_cache_usage_ratio", "gauge"),
            ("prompt_tokens", "llamacpp:prompt_tokens", "counter"),
            ("cached_prompt_tokens", "llamacpp:prompt_tokens_cached", "counter"),
            ("generation_tokens", "llamacpp:tokens_predicted", "counter"),
        ],
    ),
}

_BY_NAME: dict[str, SeriesSpec] = {s.name: s for specs in ENGINES.values() for s in specs}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

FILE_HEADER = ("t_unix", "endpoint", "name", "labels", "value")


def series_spec(name: str) -> SeriesSpec | None:
    """The mapped series a sample name belongs to (a counter's ``_total``, a histogram's parts)."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    for suffix in ("_total", *_HISTOGRAM_SUFFIXES):
        if name.endswith(suffix) and (spec := _BY_NAME.get(name.removesuffix(suffix))) is not None:
            return spec
    return None


def detect_engine(names: Iterable[str]) -> str | None:
    """The engine whose mapped series appear most among ``names`` (None when none does)."""
    counts: dict[str, int] = {}
    for n in names:
        spec = series_spec(n)
        if spec is not None:
            counts[spec.engine] = counts.get(spec.engine, 0) + 1
    return max(counts, key=lambda e: counts[e]) if counts else None


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a scrape: its full name (``_bucket``, ``_total`` kept), labels and value."""

    name: str
    labels: str
    value: float


def label_text(labels: dict[str, str]) -> str:
    """Labels in the exposition's own form, sorted: ``{a="1",b="x"}`` (empty for none)."""
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


#: lines parsed between two ``pause`` calls (about 0.3 ms of work)
PAUSE_EVERY = 64

_LINE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?[ \t]+([^ \t]+)')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}
_FAMILY_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)


def label_pairs(text: str | None) -> dict[str, str]:
    """Labels as written in an exposition or in ``label_text`` form (braces optional), unescaped."""
    if not text:
        return {}
    return {k: _unescape(v) for k, v in _LABEL.findall(text.strip("{}"))}


def _labels(inner: str | None) -> str:
    return label_text(label_pairs(inner)) if inner else ""


def parse_exposition(text: str, pause: Callable[[], None] | None = None) -> list[Sample]:
    """The samples worth keeping from a Prometheus text exposition.

    Mapped series are kept whole; other gauges and counters raw; the buckets of unmapped histograms and
    every ``_created`` sample are dropped. A line-by-line reader (the client library's parser spends
    most of a scrape on the buckets it would drop); a test holds it equal to that parser. A malformed
    exposition raises ``ConfigError`` with the line. ``pause`` is called every ``PAUSE_EVERY`` lines: a
    scraper thread passes ``time.sleep(0)`` there, so the event loop beside it never waits for the
    interpreter lock longer than a slice of the parse.
    """
    out: list[Sample] = []
    family, kind, drop_buckets = "", "untyped", False
    for number, line in enumerate(text.splitlines(), 1):
        if pause is not None and number % PAUSE_EVERY == 0:
            pause()
        if not line or line.isspace():
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                family, kind = parts[2], parts[3].strip()
                drop_buckets = kind in ("histogram", "gaugehistogram") and series_spec(family) is None
            continue
        if drop_buckets and line.startswith(family) and line.startswith("_bucket", len(family)):
            continue  # the bulk of an exposition, dropped before any parsing
        m = _LINE.match(line)
        if m is None:
            raise ConfigError(f"not a Prometheus text exposition (line {number}: {line[:80]!r})")
        name = m.group(1)
        if name.endswith("_created"):
            continue
        if name != family and not (
            name.startswith(family) and name[len(family) :] in _FAMILY_SUFFIXES.get(kind, ())
        ):
            family, kind, drop_buckets = name, "untyped", False
        elif drop_buckets and name.endswith("_bucket"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            raise ConfigError(f"not a Prometheus text exposition (line {number}: {line[:80]!r})") from None
        if math.isnan(value):
            continue
        if kind == "counter" and name == family and not name.endswith("_total"):
            name += "_total"  # as the client library names a counter typed without its suffix
        out.append(Sample(name, _labels(m.group(2)), value))
    return out


@dataclass(slots=True)
class _Series:
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def at(self, t: float) -> float | None:
        """The value in force at ``t`` (the last row at or before it)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.values[i] if i >= 0 else None

    def first_in(self, start: float, end: float) -> float | None:
        i = bisect.bisect_left(self.times, start)
        return self.values[i] if i < len(self.times) and self.times[i] <= end else None

    def during(self, start: float, end: float) -> list[float]:
        """Values in force at any moment of ``[start, end]``: the one held at ``start`` and each change."""
        lo = bisect.bisect_right(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        held = [self.values[lo - 1]] if lo > 0 else []
        return held + self.values[lo:hi]

    def increase(self, start: float, end: float, *, from_zero: bool = False) -> float | None:
        """A counter's increase over the window, across resets (a fall counts as a restart from zero).

        ``from_zero``: a series first seen inside the window started there from zero (the scrapes before
        it did not have it), as a new label set does.
        """
        lo = bisect.bisect_right(self.times, start) - 1
        hi = bisect.bisect_right(self.times, end)
        if lo < 0:
            if hi == 0:
                return None
            points = ([0.0] if from_zero else []) + self.values[:hi]
        else:
            points = self.values[lo:hi]
        total = 0.0
        for a, b in itertools.pairwise(points):
            total += b - a if b >= a else b
        return total


@dataclass(slots=True)
class SeriesFile:
    """A run's ``server_metrics.csv`` read back: each series' rows by (endpoint, name, labels)."""

    series: dict[tuple[str, str, str], _Series]
    scrapes: list[float]

    def names(self) -> set[str]:
        """Every sample name on file."""
        return {name for _, name, _ in self.series}

    def began_before(self, t: float) -> bool:
        """Whether some scrape came before ``t`` (so a series first seen after it was new then)."""
        return bool(self.scrapes) and self.scrapes[0] < t

    def engine(self) -> str | None:
        """The engine these series come from."""
        return detect_engine(self.names())

    def matching(self, spec: SeriesSpec, part: str = "") -> Iterator[tuple[str, _Series]]:
        """Every series of ``spec`` (with ``part``, such as ``_sum``), with its labels."""
        wanted = (
            {spec.name + part, spec.name + part + "_total"} if spec.kind == "counter" else {spec.name + part}
        )
        for (_, name, labels), s in self.series.items():
            if name in wanted:
                yield labels, s


def read_series(path: Path) -> SeriesFile:
    """Read ``server_metrics.csv``; a damaged row is skipped (a run killed mid-write leaves one)."""
    series: dict[tuple[str, str, str], _Series] = {}
    scrapes: set[float] = set()
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) != 5 or row[0] == FILE_HEADER[0]:
                continue
            try:
                t, value = float(row[0]), float(row[4])
            except ValueError:
                continue
            s = series.setdefault((row[1], row[2], row[3]), _Series())
            if s.times and t < s.times[-1]:
                continue
            s.times.append(t)
            s.values.append(value)
            scrapes.add(t)
    return SeriesFile(series, sorted(scrapes))


def _specs_for(engine: str | None, concept: str) -> list[SeriesSpec]:
    return [s for s in ENGINES.get(engine or "", ()) if s.concept == concept]


def _gauge(f: SeriesFile, engine: str | None, concept: str, start: float, end: float) -> dict[str, float]:
    """Mean and peak of a gauge over the window, summed across its series (a server per label set)."""
    for spec in _specs_for(engine, concept):
        found = [s for _, s in f.matching(spec)]
        if not found:
            continue
        grid = [t for t in f.scrapes if start <= t <= end] or [start]
        totals = [sum(s.at(t) or 0.0 for s in found) for t in grid]
        peak = max(found[0].during(start, end) or [0.0]) if len(found) == 1 else max(totals)
        return {"mean": sum(totals) / len(totals), "peak": peak}
    return {}


def _counter(f: SeriesFile, engine: str | None, concept: str, start: float, end: float) -> float | None:
    for spec in _specs_for(engine, concept):
        parts = [s.increase(start, end, from_zero=f.began_before(start)) for _, s in f.matching(spec)]
        known = [p for p in parts if p is not None]
        if known:
            return sum(known)
    return None


def _histogram(f: SeriesFile, engine: str | None, concept: str, start: float, end: float) -> dict[str, float]:
    """Count, mean and quantiles of a histogram's observations inside the window (bucket increases)."""
    for spec in _specs_for(engine, concept):
        z = f.began_before(start)
        count = sum(d for _, s in f.matching(spec, "_count") if (d := s.increase(start, end, from_zero=z)))
        total = sum(d for _, s in f.matching(spec, "_sum") if (d := s.increase(start, end, from_zero=z)))
        if not count:
            if list(f.matching(spec, "_count")):
                return {"count": 0}
            continue
        buckets: dict[float, float] = {}
        for labels, s in f.matching(spec, "_bucket"):
            le = _le(labels)
            if le is not None and (d := s.increase(start, end, from_zero=z)) is not None:
                buckets[le] = buckets.get(le, 0.0) + d
        out = {"count": count, "mean_s": total / count}
        for q in (0.5, 0.9, 0.95, 0.99):
            if (v := _bucket_quantile(q, buckets)) is not None:
                out[f"p{round(q * 100)}_s"] = v
        return out
    return {}


def _le(labels: str) -> float | None:
    try:
        return float(label_pairs(labels)["le"])
    except (KeyError, ValueError):
        return None


def _bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket that holds the rank."""
    bounds = sorted(buckets)
    if not bounds or not buckets[bounds[-1]]:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if math.isinf(b):
                return lower
            span = buckets[b] - below
            return lower + (b - lower) * ((rank - below) / span if span else 1.0)
        lower, below = b, buckets[b]
    return None


def gauge_over_time(f: SeriesFile, concept: str) -> tuple[list[float], list[float]]:
    """A gauge concept at every scrape (unix seconds), summed across its series; empty when not served."""
    engine = f.engine()
    for spec in _specs_for(engine, concept):
        found = [s for _, s in f.matching(spec)]
        if found:
            times = [t for t in f.scrapes if any(s.times and s.times[0] <= t for s in found)]
            return times, [sum(s.at(t) or 0.0 for s in found) for t in times]
    return [], []


def window_figures(f: SeriesFile, start: float, end: float) -> dict[str, object]:
    """The server's own figures over ``[start, end]`` (unix seconds), in common concepts.

    Gauges give mean and peak; counters their increase; histograms the count, mean and quantiles of the
    observations made inside the window. The prefix hit rate is hits over queries, or cached over all
    prompt tokens where the engine counts those instead, or the server's own rate gauge.
    """
    engine = f.engine()
    out: dict[str, object] = {"engine": engine}
    for concept in ("running", "waiting", "kv_usage", "prefix_hit_rate"):
        if g := _gauge(f, engine, concept, start, end):
            out[concept] = g
    counters = ("preemptions", "prompt_tokens", "cached_prompt_tokens", "generation_tokens")
    for concept in (*counters, "prefix_queries", "prefix_hits"):
        if (c := _counter(f, engine, concept, start, end)) is not None:
            out[concept] = c
    for concept in ("ttft", "itl", "e2e", "queue_time"):
        if h := _histogram(f, engine, concept, start, end):
            out[concept] = h
    queries, hits = out.get("prefix_queries"), out.get("prefix_hits")
    cached, computed = out.get("cached_prompt_tokens"), out.get("prompt_tokens")
    if isinstance(queries, float) and isinstance(hits, float) and queries > 0:
        out["prefix_hit_ratio"] = hits / queries
    elif isinstance(cached, float) and isinstance(computed, float) and cached + computed > 0:
        out["prefix_hit_ratio"] = cached / (cached + computed)
    elif isinstance(rate := out.get("prefix_hit_rate"), dict):
        out["prefix_hit_ratio"] = rate["mean"]
    return out
