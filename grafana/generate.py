"""Write grafana/dashboards/*.json from code: every metric name comes from exporters/names.py.

``python grafana/generate.py`` rewrites the dashboards; a test fails when the committed JSON differs
from what this script produces, so the two never drift. Dashboards use a ``datasource`` variable
(Prometheus) and ``backend`` / ``model`` / ``scenario`` template variables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "grafana"))

import rules  # noqa: E402 - after the path set-up a script needs

from agent.core import server_metrics  # noqa: E402
from agent.core.figures import figure  # noqa: E402
from exporters import names  # noqa: E402

RULES = ROOT / "grafana" / "prometheus" / "rules.yml"

OUT = ROOT / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'backend=~"$backend", model=~"$model", scenario=~"$scenario"'
BY = "sum by (backend, scenario)"
TOKENS_RATE = f"{BY} (rate({names.OUTPUT_TOKENS.name}_total{{{SEL}}}[$__rate_interval]))"
#: J/token is a macro-window figure: the GPUs' energy over their idle baseline against every output token
#: in the same interval (per-request windows overlap under concurrency and would count energy twice)
GPU_ENERGY_RATE = f"sum(rate({names.GPU_ENERGY.name}_total[$__rate_interval]))"
ALL_TOKENS_RATE = f"sum(rate({names.OUTPUT_TOKENS.name}_total{{{SEL}}}[$__rate_interval]))"
#: SLO lines drawn on latency panels (method §8 defaults; the alert rules use the same numbers)
SLO_S = {"ttft": rules.TTFT_P95_PAGE_S, "e2e": rules.E2E_P95_WARN_S, "tpot": 0.1, "itl": 0.1}


def _var(name: str, label: str, metric: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": f"label_values({metric}, {name})",
        "definition": f"label_values({metric}, {name})",
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "sort": 1,
    }


def _templating(metric: str) -> dict[str, Any]:
    source = {
        "type": "datasource",
        "name": "datasource",
        "label": "Prometheus",
        "query": "prometheus",
        "current": {"selected": True, "text": "Prometheus", "value": "Prometheus"},
    }
    labels = [_var(n, n.capitalize(), metric) for n in ("backend", "model", "scenario")]
    return {"list": [source, *labels]}


def _panel(
    pid: int,
    title: str,
    exprs: list[tuple[str, str]],
    *,
    unit: str = "short",
    pos: tuple[int, int, int, int],
    slo: float | None = None,
    description: str = "",
    kind: str = "timeseries",
) -> dict[str, Any]:
    x, y, w, h = pos
    defaults: dict[str, Any] = {"unit": unit}
    if slo is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"value": None, "color": "green"}, {"value": slo, "color": "red"}],
        }
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {
        "type": kind,
        "id": pid,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def _quantiles(metric: str, label: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, backend, model, scenario) "
            f"(rate({metric}_bucket{{{SEL}}}[$__rate_interval])))",
            f"p{int(q * 100)} {label} {{{{scenario}}}} {{{{backend}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], tags: list[str]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["infermeter", *tags],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": 39,
        "templating": _templating(names.REQUESTS.name + "_total"),
        "annotations": {"list": []},
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    """Latency quantiles with SLO lines, tokens/s on both clocks, overhead, rates, in-flight."""
    req = names.REQUESTS.name + "_total"
    row = 0
    p = []
    for i, (metric, label, key) in enumerate(
        [
            (names.TTFT, figure("ttft_ms").title, "ttft"),
            (names.ITL, figure("itl_ms").title, "itl"),
            (names.TPOT, figure("tpot_ms").title, "tpot"),
            (names.E2E, figure("e2e_ms").title, "e2e"),
        ]
    ):
        p.append(
            _panel(
                i + 1,
                f"{label} p50 / p95 / p99",
                _quantiles(metric.name, label),
                unit="s",
                pos=((i % 2) * 12, row + (i // 2) * 8, 12, 8),
                slo=SLO_S[key],
                description=metric.help,
            )
        )
    row = 16
    p += [
        _panel(
            5,
            "Tokens per second: native vs wall",
            [
                (f"{names.NATIVE_TOK_S.name}{{{SEL}}}", "native {{scenario}} {{backend}}"),
                (f"{names.WALL_TOK_S.name}{{{SEL}}}", "wall {{scenario}} {{backend}}"),
                (TOKENS_RATE, "aggregate output {{scenario}} {{backend}}"),
            ],
            unit="short",
            pos=(0, row, 12, 8),
        ),
        _panel(
            6,
            "HTTP overhead and decode fraction",
            [
                (f"{names.OVERHEAD.name}{{{SEL}}}", "overhead {{scenario}} {{backend}}"),
                (f"{names.DECODE_FRACTION.name}{{{SEL}}}", "decode fraction {{scenario}} {{backend}}"),
            ],
            unit="percentunit",
            pos=(12, row, 12, 8),
        ),
        _panel(
            7,
            "Request rate by status",
            [
                (
                    f"sum by (status, backend) (rate({req}{{{SEL}}}[$__rate_interval]))",
                    "{{status}} {{backend}}",
                ),
            ],
            unit="reqps",
            pos=(0, row + 8, 8, 8),
        ),
        _panel(
            8,
            "Degraded rate by reason",
            [
                (
                    f'sum by (reason, backend) (rate({req}{{{SEL}, status="degraded"}}[$__rate_interval]))'
                    f" / on (backend) group_left sum by (backend) (rate({req}{{{SEL}}}[$__rate_interval]))"
                    f" or on (backend) (0 * sum by (backend) (rate({req}{{{SEL}}}[$__rate_interval])))",
                    "{{reason}} {{backend}}",
                ),
            ],
            unit="percentunit",
            pos=(8, row + 8, 8, 8),
        ),
        _panel(
            9,
            "In flight",
            [
                (f"{names.IN_FLIGHT.name}{{{SEL}}}", "{{scenario}} {{backend}}"),
            ],
            pos=(16, row + 8, 8, 8),
        ),
        _panel(
            10,
            "Schedule lag p50 / p99 (open loop)",
            [
                (
                    f"histogram_quantile({q}, sum by (le, scenario, backend) "
                    f"(rate({names.SCHEDULE_LAG.name}_bucket{{{SEL}}}[$__rate_interval])))",
                    f"p{int(q * 100)} {{{{scenario}}}}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            pos=(0, row + 16, 12, 8),
            description=names.SCHEDULE_LAG.help,
        ),
        _panel(
            11,
            "Goodput: share of requests meeting every SLO",
            [
                (
                    f"sum by (backend, scenario) "
                    f"(rate({names.SLO_MET.name}_total{{{SEL}}}[$__rate_interval]))"
                    f" / sum by (backend, scenario) (rate({req}{{{SEL}}}[$__rate_interval]))",
                    "{{scenario}} {{backend}}",
                ),
            ],
            unit="percentunit",
            pos=(12, row + 16, 12, 8),
            description=names.SLO_MET.help,
        ),
    ]
    return _dashboard("infermeter-overview", "infermeter — inference overview", p, ["latency"])


def phases() -> dict[str, Any]:
    """Native prefill vs decode, warmup ratio, cold starts, decode fraction."""
    p = [
        _panel(
            1,
            "Native prefill vs decode (p50 / p95)",
            [
                *_quantiles(names.PREFILL.name, "prefill")[:2],
                *_quantiles(names.DECODE.name, "decode")[:2],
            ],
            unit="s",
            pos=(0, 0, 12, 8),
        ),
        _panel(
            2,
            "Warmup ratio",
            [(f"{names.WARMUP_RATIO.name}{{{SEL}}}", "{{scenario}} {{backend}}")],
            pos=(12, 0, 12, 8),
            description=names.WARMUP_RATIO.help,
        ),
        _panel(
            3,
            "Cold starts",
            [
                (
                    f"sum by (backend, scenario) "
                    f"(increase({names.COLD_STARTS.name}_total{{{SEL}}}[$__range]))",
                    "{{scenario}} {{backend}}",
                ),
            ],
            pos=(0, 8, 12, 8),
            kind="stat",
        ),
        _panel(
            4,
            "Decode fraction",
            [(f"{names.DECODE_FRACTION.name}{{{SEL}}}", "{{scenario}} {{backend}}")],
            unit="percentunit",
            pos=(12, 8, 12, 8),
        ),
        _panel(
            5,
            "Compile before the clock (in-process, seconds)",
            [
                (f"{names.COMPILE_SECONDS.name}{{{SEL}}}", "{{phase}} {{scenario}} {{backend}}"),
            ],
            unit="s",
            pos=(0, 16, 12, 8),
            kind="stat",
            description=names.COMPILE_SECONDS.help,
        ),
        _panel(
            6,
            "Frames compiled before / under the clock, graph breaks",
            [
                (f"{names.COMPILED_FRAMES.name}{{{SEL}}}", "{{when}} {{scenario}} {{backend}}"),
            ],
            pos=(12, 16, 12, 8),
            kind="stat",
            description=names.COMPILED_FRAMES.help,
        ),
    ]
    return _dashboard("infermeter-phases", "infermeter — phases and cold start", p, ["phases"])


def energy() -> dict[str, Any]:
    """GPU power, utilisation and memory; J/token, kWh per 1M tokens, no-data share."""
    p = [
        _panel(1, "GPU power", [(f"{names.GPU_POWER.name}", "GPU {{gpu}}")], unit="watt", pos=(0, 0, 12, 8)),
        _panel(
            2,
            "GPU utilisation and memory",
            [
                (f"{names.GPU_UTIL.name}", "util GPU {{gpu}}"),
                (f"{names.GPU_MEMORY.name}", "memory GPU {{gpu}}"),
            ],
            unit="percentunit",
            pos=(12, 0, 12, 8),
        ),
        _panel(
            3,
            "Joules per output token (macro windows: GPU energy over baseline / all output tokens)",
            [
                (f"{GPU_ENERGY_RATE} / {ALL_TOKENS_RATE}", "all scenarios"),
            ],
            unit="J",
            pos=(0, 8, 12, 8),
            description=names.GPU_ENERGY.help,
        ),
        _panel(
            4,
            "kWh per 1M output tokens (macro windows)",
            [
                (f"{GPU_ENERGY_RATE} / {ALL_TOKENS_RATE} * 1e6 / 3.6e6", "all scenarios"),
            ],
            unit="kwatth",
            pos=(12, 8, 6, 8),
        ),
        _panel(
            5,
            "Share of request windows without data",
            [
                (f"{names.ENERGY_NO_DATA.name}{{{SEL}}}", "{{scenario}} {{backend}}"),
            ],
            unit="percentunit",
            pos=(18, 8, 6, 8),
            description=names.ENERGY_NO_DATA.help,
        ),
    ]
    return _dashboard("infermeter-energy", "infermeter — energy", p, ["energy"])


def quality() -> dict[str, Any]:
    """The analyzer's quality scores, drift and tiers."""
    qsel = 'model=~"$model"'
    p = [
        _panel(
            1,
            "Quality score by task and scorer",
            [
                (f"{names.QUALITY_SCORE.name}{{{qsel}}}", "{{model}} {{task}} {{scorer}}"),
            ],
            pos=(0, 0, 12, 8),
            description=names.QUALITY_SCORE.help,
        ),
        _panel(
            2,
            "Drift against baseline",
            [
                (f"{names.QUALITY_DELTA.name}{{{qsel}}}", "{{model}} {{task}} {{scorer}}"),
            ],
            pos=(12, 0, 12, 8),
            description=names.QUALITY_DELTA.help,
        ),
        _panel(
            3,
            "Quality tier (0 negligible … 3 unacceptable)",
            [
                (f"{names.QUALITY_TIER.name}{{{qsel}}}", "{{model}} {{task}}"),
            ],
            pos=(0, 8, 12, 8),
            kind="stat",
            slo=2,
            description=names.QUALITY_TIER.help,
        ),
        _panel(
            4,
            "Analyzed regressions (1 worse, 0 unchanged, -1 better)",
            [
                (f"{names.REGRESSION.name}{{{qsel}}}", "{{model}} {{scenario}} {{metric}}"),
            ],
            pos=(12, 8, 12, 8),
            kind="stat",
            slo=1,
            description=names.REGRESSION.help,
        ),
    ]
    d = _dashboard("infermeter-quality", "infermeter — quality", p, ["quality"])
    d["templating"]["list"] = [d["templating"]["list"][0], _var("model", "Model", names.QUALITY_TIER.name)]
    return d


def fleet() -> dict[str, Any]:
    """Backend up, last success age, probe rate, scrape health."""
    req = names.REQUESTS.name + "_total"
    p = [
        _panel(
            1,
            "Backend up",
            [(f"{names.BACKEND_UP.name}{{{SEL}}}", "{{backend}}")],
            pos=(0, 0, 12, 8),
            kind="stat",
        ),
        _panel(
            2,
            "Seconds since last success",
            [
                (f"time() - {names.LAST_SUCCESS.name}{{{SEL}}}", "{{backend}} {{scenario}}"),
            ],
            unit="s",
            pos=(12, 0, 12, 8),
            slo=600,
        ),
        _panel(
            3,
            "Probe rate",
            [
                (f"sum by (backend) (rate({req}{{{SEL}}}[$__rate_interval]))", "{{backend}}"),
            ],
            unit="reqps",
            pos=(0, 8, 12, 8),
        ),
        _panel(
            4,
            "Scrape health",
            [
                ('up{job=~".*infermeter.*|daemon"}', "{{instance}}"),
                ('scrape_duration_seconds{job=~".*infermeter.*|daemon"}', "scrape s {{instance}}"),
            ],
            pos=(12, 8, 12, 8),
        ),
    ]
    return _dashboard(
        "infermeter-fleet", "infermeter — fleet and daemon health", p + _server_panels(5, 16), ["daemon"]
    )


def _vllm(concept: str) -> str:
    """VLLM's own series for a concept, from the one map the scraper reads too."""
    return next(s.name for s in server_metrics.ENGINES["vllm"] if s.concept == concept)


def _server_panels(first: int, y: int) -> list[dict[str, Any]]:
    """The canary's latency beside the server's own series, where Prometheus scrapes both (vLLM's names)."""
    ttft = _vllm("ttft")
    return [
        _panel(
            first,
            "Canary TTFT p95 beside the server's own TTFT p95",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, backend) (rate({names.TTFT.name}_bucket{{{SEL}}}"
                    "[$__rate_interval])))",
                    "canary {{backend}}",
                ),
                (
                    "histogram_quantile(0.95, sum by (le, instance) "
                    f"(rate({ttft}_bucket[$__rate_interval])))",
                    "server {{instance}}",
                ),
            ],
            unit="s",
            pos=(0, y, 12, 8),
            description="The gap between the two lines is the client's and the network's share.",
        ),
        _panel(
            first + 1,
            "Server queue: running and waiting",
            [
                (f"sum by (instance) ({_vllm('running')})", "running {{instance}}"),
                (f"sum by (instance) ({_vllm('waiting')})", "waiting {{instance}}"),
            ],
            pos=(12, y, 12, 8),
        ),
        _panel(
            first + 2,
            "Server KV cache use and prefix-cache hit rate",
            [
                (f"avg by (instance) ({_vllm('kv_usage')})", "KV cache {{instance}}"),
                (
                    f"sum by (instance) (rate({_vllm('prefix_hits')}_total[$__rate_interval])) "
                    "/ sum by (instance) "
                    f"(rate({_vllm('prefix_queries')}_total[$__rate_interval]))",
                    "prefix hits {{instance}}",
                ),
            ],
            unit="percentunit",
            pos=(0, y + 8, 12, 8),
        ),
        _panel(
            first + 3,
            "Server preemptions per second",
            [
                (f"sum by (instance) (rate({_vllm('preemptions')}_total[$__rate_interval]))", "{{instance}}"),
            ],
            unit="ops",
            pos=(12, y + 8, 12, 8),
        ),
    ]


DASHBOARDS = {"overview": overview, "phases": phases, "energy": energy, "quality": quality, "fleet": fleet}


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    """Rewrite every dashboard file and the shipped (production) rule file."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        sys.stdout.write(f"{OUT / name}\n")
    RULES.write_text(rules.render(rules.PRODUCTION))
    sys.stdout.write(f"{RULES}\n")


if __name__ == "__main__":
    main()
