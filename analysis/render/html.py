"""``report.html``: one self-contained page per run, analysis or study, with plotly's JavaScript inlined.

Nothing is fetched when the page opens (no CDN), so it works offline and can be mailed. Pictures first:
latency over time with the stages shaded, CDFs, throughput over time, the energy timeline, the sweep
curve; then the decision matrix or verdicts. Point clouds are thinned to ``MAX_POINTS`` so a page of a
100,000-request run stays a few megabytes.
"""

from __future__ import annotations

import csv
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from agent.core.server_metrics import gauge_over_time, read_series
from analysis.analyze import metric_values
from analysis.render.study import DECISION_HEAD, QUALITY_HEAD, decision_cells, quality_rows
from analysis.results import AnalysisResult, RunSummary, StudyResult, SweepSummary
from analysis.runs import Run

__all__ = ["MAX_POINTS", "analysis_html", "run_html", "study_html"]

MAX_POINTS = 20_000
_CDF_POINTS = 2_000
_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.note{color:#555}
"""


def _go() -> Any:
    import plotly.graph_objects as go

    return go


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
#: Every value a template places is escaped; only figures (plotly's own markup, its JSON escaped by
#: plotly) and parts built from these templates are marked safe.
_PAGE = _ENV.from_string(
    "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{{ title }}</title>"
    "<style>{{ style }}</style><script>{{ plotly }}</script></head>"
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
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _page(title: str, parts: Sequence[str]) -> str:
    """The whole page: plotly's JavaScript inline, then every part."""
    from plotly.offline import get_plotlyjs

    return _PAGE.render(title=title, style=Markup(_STYLE), plotly=Markup(get_plotlyjs()), parts=parts)


def _tag(tag: str, text: object, cls: str | None = None) -> Markup:
    """One element holding ``text``, escaped."""
    return Markup(_FRAGMENT.render(tag=tag, text=text, cls=cls))


def _plot_text(text: object) -> str:
    """Text for a figure's labels: plotly draws a few HTML tags in them, so ``<`` and ``&`` are escaped."""
    return html.escape(str(text), quote=False)


def _figure(fig: Any, name: str) -> Markup:
    fig.update_layout(margin={"l": 60, "r": 20, "t": 40, "b": 50}, height=380, template="plotly_white")
    div_id = _ID_UNSAFE.sub("_", name)  # an element id from scenario names: never markup
    return Markup(
        fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> Markup:
    return Markup(_TABLE.render(head=head, rows=rows))


def _thin(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``limit`` evenly spread items of ``n``."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).astype(int)) if n else np.array([], dtype=int)


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = np.sort(np.asarray(values, dtype=float))
    keep = _thin(xs.size, _CDF_POINTS)
    return xs[keep].tolist(), ((keep + 1) / xs.size).tolist()


def _cdf_figure(series: Mapping[str, Sequence[float]], title: str, name: str) -> str | None:
    go = _go()
    fig = go.Figure()
    for label, values in series.items():
        if len(values):
            xs, ys = _cdf(values)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"shape": "hv"},
                    name=_plot_text(f"{label} (n={len(values)})"),
                )
            )
    if not fig.data:
        return None
    fig.update_layout(title=_plot_text(title), xaxis_title="ms", yaxis_title="share of requests")
    return _figure(fig, name)


# --- a run ---------------------------------------------------------------------------------------------


def _stage_spans(records: Sequence[RequestRecord]) -> list[tuple[str, float, float]]:
    """Each stage (warmup, steady, cooldown, sweep stage) and the send-time span it covers, seconds."""
    spans: dict[str, list[float]] = {}
    for r in records:
        label = r.load_stage or r.stage
        end = (r.intended_offset_ms + (r.e2e_ms or 0.0)) / 1000
        span = spans.setdefault(label, [r.sent_offset_ms / 1000, end])
        span[0], span[1] = min(span[0], r.sent_offset_ms / 1000), max(span[1], end)
    return [(label, lo, hi) for label, (lo, hi) in spans.items()]


def _latency_over_time(records: Sequence[RequestRecord]) -> str | None:
    go = _go()
    ok = [r for r in records if r.status == "ok"]
    if not ok:
        return None
    keep = [ok[i] for i in _thin(len(ok))]
    fig = go.Figure()
    for field, label in (("e2e_ms", "E2E"), ("ttft_ms", "TTFT")):
        pts = [(r.sent_offset_ms / 1000, getattr(r, field)) for r in keep if getattr(r, field) is not None]
        fig.add_trace(
            go.Scattergl(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="markers",
                name=label,
                marker={"size": 4, "opacity": 0.6},
            )
        )
    shades = ("rgba(255,170,0,0.10)", "rgba(0,120,255,0.07)", "rgba(120,120,120,0.10)")
    for i, (label, lo, hi) in enumerate(_stage_spans(records)):
        fig.add_vrect(
            x0=lo,
            x1=hi,
            fillcolor=shades[i % len(shades)],
            line_width=0,
            annotation_text=_plot_text(label),
            annotation_position="top left",
        )
    fig.update_layout(
        title="latency over time (ok requests at their send time)",
        xaxis_title="s from start",
        yaxis_title="ms",
    )
    return _figure(fig, "latency-over-time")


def _throughput_over_time(records: Sequence[RequestRecord]) -> str | None:
    go = _go()
    ends = [
        ((r.intended_offset_ms + r.e2e_ms) / 1000, r.output_tokens or 0)
        for r in records
        if r.status == "ok" and r.e2e_ms is not None
    ]
    if not ends:
        return None
    last = max(t for t, _ in ends)
    width = max(1.0, last / 200)
    bins = np.zeros(int(last / width) + 1)
    for t, tokens in ends:
        bins[int(t / width)] += tokens
    xs = (np.arange(bins.size) * width).tolist()
    fig = go.Figure(go.Bar(x=xs, y=(bins / width).tolist(), name="output tok/s", width=width))
    fig.update_layout(
        title=f"throughput over time ({width:g} s bins, by request end)",
        xaxis_title="s",
        yaxis_title="output tok/s",
    )
    return _figure(fig, "throughput-over-time")


def _energy_timeline(run_dir: Path, origin_s: float | None) -> str | None:
    path = RunDir(run_dir).power
    if not path.is_file() or origin_s is None:
        return None
    go = _go()
    by_gpu: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("power_w"):
                xs, ys = by_gpu.setdefault(row.get("gpu", "0"), ([], []))
                xs.append(float(row["timestamp_s"]) - origin_s)
                ys.append(float(row["power_w"]))
    if not by_gpu:
        return None
    fig = go.Figure(
        [
            go.Scattergl(x=xs, y=ys, mode="lines", name=_plot_text(f"GPU {gpu}"))
            for gpu, (xs, ys) in by_gpu.items()
        ]
    )
    fig.update_layout(title="GPU power", xaxis_title="s from start", yaxis_title="W")
    return _figure(fig, "energy-timeline")


def _server_timeline(run_dir: Path, records: Sequence[RequestRecord]) -> str | None:
    """The server's own requests running and waiting and its KV-cache use, on the latency figure's clock."""
    path = RunDir(run_dir).server_metrics
    if not path.is_file() or not records:
        return None
    f = read_series(path)
    first = records[0]
    origin = first.sent_unix_s - first.sent_offset_ms / 1000
    go = _go()
    fig = go.Figure()
    for concept, label, axis in (
        ("running", "running", "y"),
        ("waiting", "waiting", "y"),
        ("kv_usage", "KV cache %", "y2"),
    ):
        times, values = gauge_over_time(f, concept)
        if not times:
            continue
        scale = 100.0 if concept == "kv_usage" else 1.0
        fig.add_trace(
            go.Scatter(
                x=[t - origin for t in times],
                y=[v * scale for v in values],
                mode="lines",
                line_shape="hv",
                name=label,
                yaxis=axis,
            )
        )
    if not fig.data:
        return None
    engine = f.engine() or "server"
    right = {"title": "KV cache %", "overlaying": "y", "side": "right", "rangemode": "tozero"}
    fig.update_layout(
        title=_plot_text(f"the server's own state ({engine} metrics, same clock as latency)"),
        xaxis_title="s from start",
        yaxis_title="requests",
        yaxis2=right,
    )
    return _figure(fig, "server-timeline")


def _sweep_curve(summary: RunSummary | SweepSummary | None) -> str | None:
    if not isinstance(summary, SweepSummary) or len(summary.sweep.points) < 2:
        return None
    points, knee = summary.sweep.points, summary.sweep.knee
    go = _go()
    fig = go.Figure(
        go.Scatter(
            x=[p.load for p in points],
            y=[p.throughput for p in points],
            mode="lines+markers",
            name="throughput",
        )
    )
    if knee is not None:
        fig.add_vline(x=knee.load, line_dash="dash", annotation_text=_plot_text(f"knee ({knee.stage})"))
    fig.update_layout(
        title="sweep: throughput against offered load",
        xaxis_title="offered load",
        yaxis_title=_plot_text(points[0].throughput_unit),
    )
    return _figure(fig, "sweep-curve")


def run_html(run: Run) -> str:
    """The page of one run directory."""
    records = run.records
    ok = [r for r in records if r.status == "ok" and r.stage == "steady"]
    gaps = [g for r in ok for g in r.itl_ms]
    cdfs = {
        "TTFT": [r.ttft_ms for r in ok if r.ttft_ms is not None],
        "TPOT": [r.tpot_ms for r in ok if r.tpot_ms is not None],
        "ITL (every gap)": gaps,
    }
    clock = run.manifest.clock if run.manifest is not None else None
    origin = clock.origin_perf_counter_ns if clock is not None else None
    parts = [
        _tag(
            "p",
            f"{len(records)} records, {len(ok)} ok steady; backend {', '.join(run.backends)}, "
            f"model {', '.join(run.models)}.",
            "note",
        ),
        _latency_over_time(records),
        _server_timeline(run.path, records),
        _cdf_figure(cdfs, "CDFs of TTFT, TPOT and every inter-token gap (ok steady requests)", "cdfs"),
        _throughput_over_time(records),
        _energy_timeline(run.path, origin / 1e9 if origin else None),
        _sweep_curve(run.summary),
    ]
    return _page(f"infermeter run {run.label}", [p for p in parts if p])


# --- an analysis ---------------------------------------------------------------------------------------


def _quality_deltas(result: AnalysisResult) -> list[Markup]:
    go = _go()
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
        fig = go.Figure(
            go.Scatter(
                x=[r.estimate for _, r in rows],
                y=[_plot_text(n) for n, _ in rows],
                mode="markers",
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [r.high - r.estimate for _, r in rows],
                    "arrayminus": [r.estimate - r.low for _, r in rows],
                },
            )
        )
        fig.add_vline(x=0, line_color="grey")
        fig.update_layout(
            title=_plot_text(f"{label}: quality deltas against {result.baseline} (95 % CI)"),
            xaxis_title="candidate − baseline",
        )
        out.append(_figure(fig, f"quality-{label}"))
    return out


def analysis_html(result: AnalysisResult, runs: Sequence[Run]) -> str:
    """The page of one analysis: latency CDFs per scenario, verdicts, quality deltas."""
    parts: list[str] = []
    scenarios = list(dict.fromkeys(sc for run in runs for sc in run.by_scenario))
    for sc in scenarios:
        for metric, label in (("ttft_ms", "TTFT"), ("e2e_ms", "E2E")):
            series = {run.label: metric_values(run.by_scenario.get(sc, []), metric) for run in runs}
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


def _study_bars(result: StudyResult) -> str | None:
    go = _go()
    scenarios = list(dict.fromkeys(d.scenario for d in result.decision))
    fig = go.Figure()
    for variant in dict.fromkeys(d.variant for d in result.decision):
        mine = {d.scenario: d.output_tok_s for d in result.decision if d.variant == variant}
        ys = [mine.get(sc) for sc in scenarios]
        fig.add_trace(go.Bar(x=[_plot_text(sc) for sc in scenarios], y=ys, name=_plot_text(variant)))
    if not any(d.output_tok_s for d in result.decision):
        return None
    fig.update_layout(title="output tok/s by variant (median over repetitions)", barmode="group")
    return _figure(fig, "study-throughput")


def _study_cells(result: StudyResult, metric: str, title: str) -> str | None:
    go = _go()
    fig = go.Figure()
    for variant in dict.fromkeys(c.variant for c in result.cells):
        cells = [c for c in result.cells if c.variant == variant and c.figures.get(metric) is not None]
        xs, ys = [_plot_text(c.scenario) for c in cells], [c.figures[metric] for c in cells]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=_plot_text(variant), marker={"size": 9}))
    if not any(len(t.x) for t in fig.data):
        return None
    fig.update_layout(title=title, yaxis_title="ms")
    return _figure(fig, f"study-cells-{metric}")


def _study_quality(result: StudyResult) -> list[Markup]:
    """Per scenario: each variant's generation delta per task group (a bar each), then the table."""
    go = _go()
    out = []
    for scenario in dict.fromkeys(d.scenario for d in result.decision):
        rows = quality_rows(result, scenario)
        if not rows:
            continue
        fig = go.Figure()
        for d in result.decision:
            if d.scenario != scenario or d.variant == result.baseline or not d.quality_by_task:
                continue
            tasks = list(d.quality_by_task)
            ys = [d.quality_by_task[t].generation_delta_pct for t in tasks]
            fig.add_trace(go.Bar(x=[_plot_text(t) for t in tasks], y=ys, name=_plot_text(d.variant)))
        fig.add_hline(y=0, line_color="grey")
        fig.update_layout(
            title=_plot_text(f"{scenario}: quality against {result.baseline} per task group"),
            yaxis_title="generation delta, %",
            barmode="group",
        )
        out += [_figure(fig, f"study-quality-{scenario}"), _table(QUALITY_HEAD, rows)]
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
