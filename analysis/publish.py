"""Publish an analysis to Prometheus: a Pushgateway push and/or a node_exporter textfile.

The series are the catalogue's analyzer metrics (``exporters.names.ANALYZER``): quality score and delta
per model, task and scorer, the drift tier per model and task (``task="all"`` is the worst task), one
regression verdict per scenario and metric, and when the analysis was made. Alert rules in
``grafana/prometheus/rules.yml`` fire on the tier and the verdicts.

Each candidate run is its own Pushgateway group (``job`` + ``model`` + ``candidate``, the run's label):
analysing the same candidate again replaces its series, and a second candidate of the same model never
overwrites the first, so a drifted candidate's alert stands until its group is deleted (retired) on
purpose: ``DELETE /metrics/job/<job>/model/<model>/candidate/<label>``.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from analysis.quality import TIERS
from analysis.results import AnalysisResult, Quality
from exporters import names

__all__ = ["DEFAULT_JOB", "build_registries", "publish"]

DEFAULT_JOB = "infermeter_analyze"
_VERDICT = {"worse": 1, "no detectable change": 0, "better": -1}


def _gauge(spec: names.MetricSpec, registry: CollectorRegistry, extra: tuple[str, ...] = ()) -> Gauge:
    return Gauge(spec.name, spec.help, (*spec.labels, *extra), registry=registry)


class _Labelled:
    """The gauges of one group, adding the group's own labels (a textfile's ``candidate``) to each."""

    def __init__(self, gauges: dict[str, Gauge], extra: dict[str, str], now: float, model: str) -> None:
        self._gauges = gauges
        self._extra = extra
        self[names.ANALYSIS_TIME.name].labels(model=model).set(now)

    def __getitem__(self, name: str) -> _Labelled._Family:
        return _Labelled._Family(self._gauges[name], self._extra)

    class _Family:
        def __init__(self, gauge: Gauge, extra: dict[str, str]) -> None:
            self.gauge, self.extra = gauge, extra

        def labels(self, **labels: str) -> Gauge:
            return self.gauge.labels(**labels, **self.extra)


def _model_of(result: AnalysisResult, label: str) -> str:
    run = next((r for r in result.runs if r.label == label), None)
    models = run.models if run else []
    return models[0] if len(models) == 1 else ",".join(models) or label


def build_registries(
    result: AnalysisResult, now: float | None = None, *, per_group: bool = True
) -> dict[tuple[str, str], CollectorRegistry]:
    """The analyzer series of each candidate run, one registry per (model, candidate label).

    With ``per_group=False`` all of them go into one registry keyed ``("", "")`` (a textfile), where
    the candidate is a label of its own.
    """
    now = time.time() if now is None else now
    regs: dict[tuple[str, str], CollectorRegistry] = {}
    gauges: dict[tuple[str, str], dict[str, Gauge]] = {}

    def reg(model: str, label: str) -> _Labelled:
        group = (model, label) if per_group else ("", "")
        if group not in regs:
            r = CollectorRegistry(auto_describe=True)
            regs[group] = r
            extra = () if per_group else ("candidate",)
            gauges[group] = {spec.name: _gauge(spec, r, extra) for spec in names.ANALYZER}
        return _Labelled(gauges[group], {} if per_group else {"candidate": label}, now, model)

    labels = [r.label for r in result.runs if r.label != result.baseline]
    for label in labels:
        model = _model_of(result, label)
        g = reg(model, label)
        _quality_series(g, model, result.quality, label)
        comp = result.comparisons.get(label)
        for sc, rows in (comp.scenarios if comp else {}).items():
            for c in rows:
                if c.verdict in _VERDICT:
                    g[names.REGRESSION.name].labels(model=model, scenario=sc, metric=c.metric).set(
                        _VERDICT[c.verdict]
                    )
    return regs


def _quality_series(g: _Labelled, model: str, quality: Quality | None, label: str) -> None:
    """A candidate's scores, score deltas and quality tiers."""
    if quality is None:
        return
    for task, t in quality.runs.get(label, {}).items():
        for scorer, ci in t.scorers.items():
            if ci is not None:
                g[names.QUALITY_SCORE.name].labels(model=model, task=task, scorer=scorer).set(ci.estimate)
    d = quality.drift.get(label)
    if d is None:
        return
    for task, td in d.tasks.items():
        for scorer, s in td.scorers.items():
            if s.candidate is not None and s.baseline is not None:
                delta = s.candidate - s.baseline
                g[names.QUALITY_DELTA.name].labels(model=model, task=task, scorer=scorer).set(delta)
        if td.tier is not None:
            g[names.QUALITY_TIER.name].labels(model=model, task=task).set(TIERS.index(td.tier))
    if d.tier is not None:
        g[names.QUALITY_TIER.name].labels(model=model, task="all").set(TIERS.index(d.tier))


def publish(
    result: AnalysisResult,
    *,
    pushgateway: str | None = None,
    textfile: Path | None = None,
    job: str = DEFAULT_JOB,
    timeout: float = 10.0,
) -> list[str]:
    """Push and/or write the analyzer series; return one line per destination for the console."""
    done: list[str] = []
    if pushgateway:
        regs = build_registries(result)
        for (model, label), registry in regs.items():
            key = {"model": model, "candidate": label}
            push_to_gateway(pushgateway, job=job, registry=registry, grouping_key=key, timeout=timeout)
        done.append(f"pushed {len(regs)} candidate group(s) to {pushgateway} (job {job})")
    if textfile is not None:
        combined = build_registries(result, per_group=False).get(("", "")) or CollectorRegistry()
        textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(textfile), combined)
        done.append(f"wrote {textfile} for node_exporter's textfile collector")
    return done
