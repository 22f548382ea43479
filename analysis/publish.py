"""Publish an analysis to Prometheus: a Pushgateway push and/or a node_exporter textfile.

The series are the catalogue's analyzer metrics (``exporters.names.ANALYZER``): quality score and delta
per model, task and scorer, the drift tier per model and task (``task="all"`` is the worst task), one
regression verdict per scenario and metric, and when the analysis was made. Alert rules in
``grafana/prometheus/rules.yml`` fire on the tier and the verdicts.

Each model is its own Pushgateway group (``job`` + ``model``), so a new analysis of a model replaces the
previous one and leaves other models' series alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from analysis.quality import TIERS
from exporters import names

__all__ = ["DEFAULT_JOB", "build_registries", "publish"]

DEFAULT_JOB = "infermeter_analyze"
_VERDICT = {"worse": 1, "no detectable change": 0, "better": -1}


def _gauge(spec: names.MetricSpec, registry: CollectorRegistry) -> Gauge:
    return Gauge(spec.name, spec.help, spec.labels, registry=registry)


def _model_of(result: dict[str, Any], label: str) -> str:
    run = next((r for r in result["runs"] if r["label"] == label), None)
    models = (run or {}).get("models") or []
    return models[0] if len(models) == 1 else ",".join(models) or label


def build_registries(
    result: dict[str, Any], now: float | None = None, *, per_model: bool = True
) -> dict[str, CollectorRegistry]:
    """The analyzer series of the last candidate run of each model.

    One registry per model (keyed by model), or with ``per_model=False`` all of them in one keyed ``""``.
    """
    now = time.time() if now is None else now
    regs: dict[str, CollectorRegistry] = {}
    gauges: dict[str, dict[str, Gauge]] = {}

    def reg(model: str) -> dict[str, Gauge]:
        group = model if per_model else ""
        if group not in regs:
            r = CollectorRegistry(auto_describe=True)
            regs[group] = r
            gauges[group] = {spec.name: _gauge(spec, r) for spec in names.ANALYZER}
        gauges[group][names.ANALYSIS_TIME.name].labels(model=model).set(now)
        return gauges[group]

    # one set of series per model: of several candidates of a model, the last given is published
    labels = [r["label"] for r in result["runs"] if r["label"] != result.get("baseline")]
    candidates = {_model_of(result, label): label for label in labels}
    quality = result.get("quality") or {}
    for model, label in candidates.items():
        g = reg(model)
        for task, t in (quality.get("runs") or {}).get(label, {}).items():
            for scorer, ci in t["scorers"].items():
                if ci is not None:
                    g[names.QUALITY_SCORE.name].labels(model=model, task=task, scorer=scorer).set(
                        ci["estimate"]
                    )
        d = (quality.get("drift") or {}).get(label)
        if d:
            for task, t in d["tasks"].items():
                for scorer, s in t["scorers"].items():
                    delta = s["candidate"] - s["baseline"]
                    g[names.QUALITY_DELTA.name].labels(model=model, task=task, scorer=scorer).set(delta)
                if t["tier"] is not None:
                    g[names.QUALITY_TIER.name].labels(model=model, task=task).set(TIERS.index(t["tier"]))
            if d["tier"] is not None:
                g[names.QUALITY_TIER.name].labels(model=model, task="all").set(TIERS.index(d["tier"]))
        comp = (result.get("comparisons") or {}).get(label)
        if comp:
            for sc, rows in comp["scenarios"].items():
                for c in rows:
                    if c["verdict"] in _VERDICT:
                        g[names.REGRESSION.name].labels(model=model, scenario=sc, metric=c["metric"]).set(
                            _VERDICT[c["verdict"]]
                        )
    return regs


def publish(
    result: dict[str, Any],
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
        for model, registry in regs.items():
            push_to_gateway(
                pushgateway, job=job, registry=registry, grouping_key={"model": model}, timeout=timeout
            )
        done.append(f"pushed {len(regs)} model group(s) to {pushgateway} (job {job})")
    if textfile is not None:
        combined = build_registries(result, per_model=False).get("") or CollectorRegistry()
        textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(textfile), combined)
        done.append(f"wrote {textfile} for node_exporter's textfile collector")
    return done
