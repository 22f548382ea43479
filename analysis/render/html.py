"""``report.html``: one self-contained page per run, analysis or study, its figures inline SVG.

Nothing is fetched when the page opens and no script runs, so it works offline, can be mailed, and weighs
what its figures weigh (tens of kilobytes), whatever the run's size. The figures are drawn by matplotlib
as SVG and summarise the records rather than plot one marker per request: latency over time is the
median, p95 and p99 of each time bin with the stages shaded, CDFs are drawn through a few hundred
quantiles, throughput is binned by request end, and long power and server series are averaged into at
most ``MAX_POINTS`` points. A run page is drawn from the run's records read as columns, so a million
records cost what the summary costs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from agent.core.manifest import Manifest
from agent.core.rundir import RunDir
from agent.core.server_metrics import gauge_over_time, read_series
from analysis.analyze import metric_values
from analysis.columns import RecordColumns, Rows, read_columns
from analysis.render.study import DECISION_HEAD, QUALITY_HEAD, decision_cells, quality_rows
from analysis.results import AnalysisResult, RunSummary, StudyResult, SweepSummary
from analysis.runs import Run, read_summary

__all__ = ["MAX_POINTS", "TIME_BINS", "analysis_html", "run_html", "study_html"]

#: Most points a line of a figure holds (longer series are averaged into this many bins).
MAX_POINTS = 2_000
#: Time bins of the latency and throughput figures.
TIME_BINS = 200
#: Quantiles a CDF is drawn through.
_CDF_POINTS = 400
_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.note{color:#555}
figure.chart{margin:16px 0}figure.chart svg{max-width:100%;height:auto}
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
#: Every value a template places is escaped; only figures (matplotlib's SVG, which escapes its own text)
#: and parts built from these templates are marked safe.
_PAGE = _ENV.from_string(
    "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{{ title }}</title>"
    "<style>{{ style }}</style></head>"
    "<body><h1>{{ title }}</h1>\n{% for part in parts %}{{ part }}\n{% endfor %}</body></html>\n"
)
_TABLE = _ENV.from_string(
    "<table><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr>"
    "{% for row in rows %}<tr>{% for v in row %}<td>{{ '—' if v is none else v }}</td>{% endfor %}</tr>"
    "{% endfor %}</table>"
)
_FRAGMENT = _ENV.from_string("<{{ tag }}{% if cls %} class='{{ cls }}'{% endif %}>{{ text }}</{{ tag }}>")
_ITEMS = _ENV.from_string(
    "<ul>{% for head, text in items %}<li><b>{{ head }}</b>: {{ text }}</li>{% endfor %}</ul>"
)
_FIGURE = _ENV.from_string(
    "<figure class='chart' id='{{ id }}' data-series='{{ series }}' data-points='{{ points }}'>"
    "{{ svg }}</figure>"
)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)


def _page(title: str, parts: Sequence[str]) -> str:
    """The whole page: the style, then every part."""
    return _PAGE.render(title=title, style=Markup(_STYLE), parts=parts)


def _tag(tag: str, text: object, cls: str | None = None) -> Markup:
    """One element holding ``text``, escaped."""
    return Markup(_FRAGMENT.render(tag=tag, text=text, cls=cls))


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> Markup:
    return Markup(_TABLE.render(head=head, rows=rows))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _Chart:
    """One figure: an axes to draw on, and what was drawn (series and points, for the page's own check)."""

    def __init__(self, name: str, title: str, xlabel: str, ylabel: str) -> None:
        self.name = _ID_UNSAFE.sub("_", name)  # an element id from scenario names: never markup
        self.fig, self.ax = _plt().subplots(figsize=(11, 3.8))
        self.ax.set_title(title, fontsize=11)
        self.ax.set_xlabel(xlabel)
        self.ax.set_ylabel(ylabel)
        self.ax.grid(alpha=0.3)
        self.series = 0
        self.points = 0

    def drew(self, points: int) -> None:
        """Count a series of ``points`` points as drawn."""
        self.series += 1
        self.points += int(points)

    def markup(self, legend: bool = True) -> Markup | None:
        """The figure as inline SVG (None when nothing was drawn); the figure is closed either way."""
        plt = _plt()
        try:
            if not self.series:
                return None
            if legend and self.ax.get_legend_handles_labels()[0]:
                self.ax.legend(fontsize=8)
            self.fig.tight_layout()
            out = io.StringIO()
            with _svg_settings(self.name):
                self.fig.savefig(out, format="svg", metadata={"Date": None})
            svg = Markup(_PROLOG.sub("", out.getvalue(), count=1))
            return Markup(_FIGURE.render(id=self.name, series=self.series, points=self.points, svg=svg))
        finally:
            plt.close(self.fig)


@contextlib.contextmanager
def _svg_settings(salt: str) -> Iterator[None]:
    """Text kept as text (small, searchable); ids salted per figure (unique on a page, the same each run)."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        yield


def _chart(name: str, title: str, xlabel: str, ylabel: str) -> _Chart:
    import matplotlib

    matplotlib.rcParams["text.parse_math"] = False  # a model or run named with "$" is text, not TeX
    return _Chart(name, title, xlabel, ylabel)


def _quantile_curve(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CDF through ``_CDF_POINTS`` quantiles (every value where there are fewer)."""
    xs = np.sort(values)
    if xs.size <= _CDF_POINTS:
        return xs, np.arange(1, xs.size + 1) / xs.size
    share = np.linspace(0, 1, _CDF_POINTS)
    return np.quantile(xs, share), share


def _cdf_figure(series: Mapping[str, np.ndarray | Sequence[float]], title: str, name: str) -> Markup | None:
    chart = _chart(name, title, "ms", "share of requests")
    for label, values in series.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size:
            xs, ys = _quantile_curve(arr)
            chart.ax.step(xs, ys, where="post", label=f"{label} (n={arr.size:,})")
            chart.drew(xs.size)
    return chart.markup()


def _binned(t: np.ndarray, y: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """A series averaged into at most ``limit`` equal time bins (the series itself when it is shorter)."""
    if t.size <= limit:
        return t, y
    edges = np.linspace(t.min(), t.max(), limit + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, limit - 1)
    n = np.bincount(idx, minlength=limit)
    keep = n > 0
    return (np.bincount(idx, t, limit)[keep] / n[keep]), (np.bincount(idx, y, limit)[keep] / n[keep])


def _bin_quantiles(
    t: np.ndarray, y: np.ndarray, qs: Sequence[float], bins: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each time bin's centre and the quantiles ``qs`` of its values (bins with no value left out)."""
    edges = np.linspace(t.min(), t.max() if t.max() > t.min() else t.min() + 1, bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    order = np.lexsort((y, idx))
    idx, y = idx[order], y[order]
    counts = np.bincount(idx, minlength=bins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = counts > 0
    centres = ((edges[:-1] + edges[1:]) / 2)[keep]
    out = []
    for q in qs:
        pos = starts[keep] + q * (counts[keep] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, starts[keep] + counts[keep] - 1)
        out.append(y[lo] + (y[hi] - y[lo]) * (pos - lo))
    return centres, out


# --- a run ---------------------------------------------------------------------------------------------


def _stage_spans(rows: Rows) -> list[tuple[str, float, float]]:
    """Each stage (warmup, steady, cooldown, sweep stage) and the send-time span it covers, seconds."""
    sent = rows.f("sent_offset_ms") / 1000
    end = (rows.f("intended_offset_ms") + np.nan_to_num(rows.f("e2e_ms"))) / 1000
    load, stage = rows.codes("load_stage").astype(np.int64), rows.codes("stage").astype(np.int64)
    key = np.where(load >= 0, load, -2 - stage)  # a sweep stage's label, else the record's stage
    uniq, first = np.unique(key, return_index=True)
    spans = []
    for k in uniq[np.argsort(first)].tolist():
        inside = key == k
        label = rows.label_of("load_stage", k) if k >= 0 else rows.label_of("stage", -2 - k)
        spans.append((str(label), float(sent[inside].min()), float(end[inside].max())))
    return spans


def _latency_over_time(rows: Rows) -> Markup | None:
    ok = rows.where(rows.is_("status", "ok"))
    if not len(ok):
        return None
    chart = _chart(
        "latency-over-time",
        "latency over time (ok requests by send time: median line, p95 dashed, band to p99)",
        "s from start",
        "ms",
    )
    t = ok.f("sent_offset_ms") / 1000
    for field, label, colour in (("e2e_ms", "E2E", "tab:blue"), ("ttft_ms", "TTFT", "tab:orange")):
        y = ok.f(field)
        known = ~np.isnan(y)
        if not known.any():
            continue
        centres, (p50, p95, p99) = _bin_quantiles(t[known], y[known], (0.5, 0.95, 0.99), TIME_BINS)
        chart.ax.plot(centres, p50, color=colour, label=f"{label} p50")
        chart.ax.plot(centres, p95, color=colour, linestyle="--", linewidth=0.8, label=f"{label} p95")
        chart.ax.fill_between(centres, p50, p99, color=colour, alpha=0.15, linewidth=0)
        chart.drew(centres.size)
    shades = ("#ffaa00", "#0078ff", "#787878")
    for i, (label, lo, hi) in enumerate(_stage_spans(rows)):
        chart.ax.axvspan(lo, hi, color=shades[i % len(shades)], alpha=0.08, linewidth=0)
        chart.ax.annotate(label, (lo, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8)
    return chart.markup()


def _throughput_over_time(rows: Rows) -> Markup | None:
    ok = rows.where(rows.is_("status", "ok") & ~np.isnan(rows.f("e2e_ms")))
    if not len(ok):
        return None
    ends = (ok.f("intended_offset_ms") + ok.f("e2e_ms")) / 1000
    last = float(ends.max())
    width = max(1.0, last / TIME_BINS)
    bins = np.bincount((ends / width).astype(np.int64), np.nan_to_num(ok.f("output_tokens")))
    chart = _chart(
        "throughput-over-time",
        f"throughput over time ({width:g} s bins, by request end)",
        "s",
        "output tok/s",
    )
    chart.ax.bar(np.arange(bins.size) * width, bins / width, width=width, align="edge", label="output tok/s")
    chart.drew(bins.size)
    return chart.markup(legend=False)


def _energy_timeline(run_dir: Path, origin_s: float | None) -> Markup | None:
    path = RunDir(run_dir).power
    if not path.is_file() or origin_s is None:
        return None
    by_gpu: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("power_w"):
                xs, ys = by_gpu.setdefault(row.get("gpu", "0"), ([], []))
                xs.append(float(row["timestamp_s"]) - origin_s)
                ys.append(float(row["power_w"]))
    chart = _chart("energy-timeline", "GPU power", "s from start", "W")
    for gpu, (xs, ys) in by_gpu.items():
        t, w = _binned(np.asarray(xs), np.asarray(ys))
        chart.ax.plot(t, w, label=f"GPU {gpu}")
        chart.drew(t.size)
    return chart.markup()


def _server_timeline(run_dir: Path, origin: float | None) -> Markup | None:
    """The server's own requests running and waiting and its KV-cache use, on the latency figure's clock."""
    path = RunDir(run_dir).server_metrics
    if not path.is_file() or origin is None:
        return None
    f = read_series(path)
    engine = f.engine() or "server"
    chart = _chart(
        "server-timeline",
        f"the server's own state ({engine} metrics, same clock as latency)",
        "s from start",
        "requests",
    )
    right = None
    for concept, label in (("running", "running"), ("waiting", "waiting"), ("kv_usage", "KV cache %")):
        times, values = gauge_over_time(f, concept)
        if not times:
            continue
        t, v = _binned(
            np.asarray(times) - origin, np.asarray(values) * (100.0 if concept == "kv_usage" else 1.0)
        )
        if concept == "kv_usage":
            right = right or chart.ax.twinx()
            right.set_ylabel("KV cache %")
            right.step(t, v, where="post", label=label, color="tab:green")
        else:
            chart.ax.step(t, v, where="post", label=label)
        chart.drew(t.size)
    return chart.markup()


def _sweep_curve(summary: RunSummary | SweepSummary | None) -> Markup | None:
    if not isinstance(summary, SweepSummary) or len(summary.sweep.points) < 2:
        return None
    points, knee = summary.sweep.points, summary.sweep.knee
    chart = _chart(
        "sweep-curve", "sweep: throughput against offered load", "offered load", points[0].throughput_unit
    )
    chart.ax.plot([p.load for p in points], [p.throughput for p in points], marker="o", label="throughput")
    chart.drew(len(points))
    if knee is not None:
        chart.ax.axvline(knee.load, linestyle="--", color="grey", label=f"knee ({knee.stage})")
    return chart.markup()


#: Inter-token gaps a CDF is drawn from; a run with more is drawn from an even sample of them.
_GAPS_DRAWN = 2 << 20


def _gaps(cols: RecordColumns, rows: Rows) -> np.ndarray:
    """The rows' inter-token gaps (every ``k``-th where there are more than ``_GAPS_DRAWN``)."""
    step = max(1, -(-cols.itl.count(rows.index) // _GAPS_DRAWN))
    return np.concatenate([np.zeros(0), *(c[::step].copy() for c in cols.itl.chunks(rows.index))])


def run_html(run_dir: Path, label: str | None = None, cols: RecordColumns | None = None) -> str:
    """The page of one run directory, drawn from its records' columns (read here unless given)."""
    own = cols is None
    cols = read_columns(run_dir) if cols is None else cols
    try:
        return _run_page(run_dir, label or run_dir.name, cols)
    finally:
        if own:
            cols.close()


def _run_page(run_dir: Path, label: str, cols: RecordColumns) -> str:
    rows = cols.rows()
    ok = rows.where(rows.is_("status", "ok") & rows.is_("stage", "steady"))
    try:
        manifest = Manifest.read(RunDir(run_dir).manifest)
    except ValueError:
        manifest = None
    clock = manifest.clock if manifest is not None else None
    origin = clock.origin_perf_counter_ns if clock is not None else None
    cdfs = {"TTFT": ok.f("ttft_ms"), "TPOT": ok.f("tpot_ms"), "ITL (every gap)": _gaps(cols, ok)}
    parts = [
        _tag(
            "p",
            f"{cols.n} records, {len(ok)} ok steady; backend {', '.join(map(str, rows.groups('backend')))}, "
            f"model {', '.join(map(str, rows.groups('model')))}.",
            "note",
        ),
        _latency_over_time(rows),
        _server_timeline(run_dir, cols.origin_unix_s),
        _cdf_figure(cdfs, "CDFs of TTFT, TPOT and every inter-token gap (ok steady requests)", "cdfs"),
        _throughput_over_time(rows),
        _energy_timeline(run_dir, origin / 1e9 if origin else None),
        _sweep_curve(read_summary(RunDir(run_dir).summary, [])),
    ]
    return _page(f"infermeter run {label}", [p for p in parts if p])


# --- an analysis ---------------------------------------------------------------------------------------


def _quality_deltas(result: AnalysisResult) -> list[Markup]:
    out = []
    for label, d in (result.quality.drift if result.quality else {}).items():
        rows = [
            (f"{task}/{name}", s.delta)
            for task, t in d.tasks.items()
            for name, s in t.scorers.items()
            if s.delta
        ]
        if not rows:
            continue
        chart = _chart(
            f"quality-{label}",
            f"{label}: quality deltas against {result.baseline} (95 % CI)",
            "candidate − baseline",
            "",
        )
        est = np.asarray([r.estimate for _, r in rows])
        err = np.asarray([[r.estimate - r.low for _, r in rows], [r.high - r.estimate for _, r in rows]])
        chart.ax.errorbar(est, np.arange(len(rows)), xerr=err, fmt="o", capsize=3)
        chart.ax.set_yticks(np.arange(len(rows)), [n for n, _ in rows], fontsize=8)
        chart.ax.axvline(0, color="grey")
        chart.drew(len(rows))
        markup = chart.markup(legend=False)
        if markup is not None:
            out.append(markup)
    return out


def analysis_html(result: AnalysisResult, runs: Sequence[Run]) -> str:
    """The page of one analysis: latency CDFs per scenario, verdicts, quality deltas."""
    parts: list[str] = []
    scenarios = list(dict.fromkeys(sc for run in runs for sc in run.by_scenario))
    for sc in scenarios:
        for metric, label in (("ttft_ms", "TTFT"), ("e2e_ms", "E2E")):
            series = {run.label: metric_values(run.scenario(sc), metric) for run in runs}
            fig = _cdf_figure(series, f"{sc}: {label} CDF (ok steady warm requests)", f"cdf-{sc}-{metric}")
            if fig:
                parts.append(fig)
    for label, comp in result.comparisons.items():
        rows = [
            [sc, c.metric, c.median_baseline, c.median_candidate, c.change_pct, c.p_adjusted, c.verdict]
            for sc, cs in comp.scenarios.items()
            for c in cs
        ]
        head = ["scenario", "metric", "baseline p50", "candidate p50", "change %", "p (adj.)", "verdict"]
        parts.append(_tag("h2", f"{label} vs {result.baseline}") + _table(head, _round(rows)))
    parts += _quality_deltas(result)
    return _page("infermeter analysis", parts)


def _round(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    return [[f"{v:.3g}" if isinstance(v, float) else v for v in row] for row in rows]


# --- a study -------------------------------------------------------------------------------------------


def _grouped_bars(chart: _Chart, groups: Sequence[str], bars: Mapping[str, Sequence[float | None]]) -> None:
    """One bar per (group, series), the series side by side within each group."""
    width = 0.8 / max(1, len(bars))
    for i, (label, ys) in enumerate(bars.items()):
        xs = np.arange(len(groups)) + (i - (len(bars) - 1) / 2) * width
        values = [np.nan if y is None else y for y in ys]
        chart.ax.bar(xs, values, width=width, label=label)
        chart.drew(sum(1 for y in ys if y is not None))
    chart.ax.set_xticks(np.arange(len(groups)), list(groups))


def _study_bars(result: StudyResult) -> Markup | None:
    if not any(d.output_tok_s for d in result.decision):
        return None
    scenarios = list(dict.fromkeys(d.scenario for d in result.decision))
    bars = {}
    for variant in dict.fromkeys(d.variant for d in result.decision):
        mine = {d.scenario: d.output_tok_s for d in result.decision if d.variant == variant}
        bars[variant] = [mine.get(sc) for sc in scenarios]
    chart = _chart(
        "study-throughput", "output tok/s by variant (median over repetitions)", "", "output tok/s"
    )
    _grouped_bars(chart, scenarios, bars)
    return chart.markup()


def _study_cells(result: StudyResult, metric: str, title: str) -> Markup | None:
    chart = _chart(f"study-cells-{metric}", title, "", "ms")
    scenarios = list(dict.fromkeys(c.scenario for c in result.cells))
    variants = list(dict.fromkeys(c.variant for c in result.cells))
    for i, variant in enumerate(variants):
        cells = [c for c in result.cells if c.variant == variant and c.figures.get(metric) is not None]
        if not cells:
            continue
        shift = (i - (len(variants) - 1) / 2) * 0.8 / max(1, len(variants))
        xs = [scenarios.index(c.scenario) + shift for c in cells]
        chart.ax.scatter(xs, [c.figures[metric] for c in cells], s=30, label=variant)
        chart.drew(len(cells))
    chart.ax.set_xticks(np.arange(len(scenarios)), scenarios)
    return chart.markup()


def _study_quality(result: StudyResult) -> list[Markup]:
    """Per scenario: each variant's generation delta per task group (a bar each), then the table."""
    out = []
    for scenario in dict.fromkeys(d.scenario for d in result.decision):
        rows = quality_rows(result, scenario)
        if not rows:
            continue
        graded = [
            d
            for d in result.decision
            if d.scenario == scenario and d.variant != result.baseline and d.quality_by_task
        ]
        tasks = list(dict.fromkeys(t for d in graded for t in d.quality_by_task))
        bars = {}
        for d in graded:
            q = d.quality_by_task
            bars[d.variant] = [q[t].generation_delta_pct if t in q else None for t in tasks]
        chart = _chart(
            f"study-quality-{scenario}",
            f"{scenario}: quality against {result.baseline} per task group",
            "",
            "generation delta, %",
        )
        _grouped_bars(chart, tasks, bars)
        chart.ax.axhline(0, color="grey")
        figure = chart.markup()
        out += [m for m in (figure, _table(QUALITY_HEAD, rows)) if m is not None]
    return out


def study_html(result: StudyResult) -> str:
    """The page of one study: the recommendation, the decision matrix, and every cell's figures."""
    recs = _ITEMS.render(items=[(r.scenario, r.reason) for r in result.recommendations])
    head = ["scenario", *DECISION_HEAD]
    rows = [[d.scenario, *decision_cells(d, result.baseline)] for d in result.decision]
    parts = [
        _tag(
            "p",
            f"{len(result.variants)} variants, {result.repetitions} repetitions, order {result.order} "
            f"(seed {result.seed}), baseline {result.baseline}.",
            "note",
        ),
        Markup("<h2>Recommendation</h2>" + recs),
        Markup("<h2>Decision matrix</h2>") + _table(head, rows),
        *_study_quality(result),
        _study_bars(result),
        _study_cells(result, "ttft_ms", "TTFT p50 of every cell"),
        _study_cells(result, "e2e_ms", "E2E p50 of every cell"),
    ]
    return _page(f"infermeter study {result.name}", [p for p in parts if p])
