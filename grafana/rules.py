"""The Prometheus recording and alerting rules, from code, for a profile of windows and hold times.

``PRODUCTION`` is what ships (``grafana/prometheus/rules.yml``, written by ``python grafana/generate.py``
and checked current by a test); ``FAST`` is the same rules with second-scale windows, for tests that
drive a real Prometheus and Alertmanager inside a few minutes. Every metric name comes from
``exporters/names.py``.

What pages and why that signal:

- latency against absolute objectives (p95 TTFT over 1 s pages; p95 E2E over 30 s warns);
- a regression against the series' own past: per-request decode rate (1 / mean TPOT) under 70 % of the
  same window ``baseline`` ago, or mean TTFT over 1.5× of it. Per-request figures move when the server
  slows down whatever the load, unlike the aggregate token rate, which a probe schedule sets;
- quality and analysed regressions pushed by the offline analyzer; degraded share; a backend that cannot
  be reached; no recent success; GPU memory; energy sampling that cannot see the requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from exporters import names

__all__ = ["FAST", "PRODUCTION", "Profile", "render", "rules"]

BY = "backend, model, scenario"
#: method §8: p95 latency over 1 s pages
TTFT_P95_PAGE_S = 1.0
E2E_P95_WARN_S = 30.0
#: a regression: per-request decode rate under this share of the baseline's, or TTFT over this factor
DECODE_RATE_FLOOR = 0.7
TTFT_CEILING = 1.5


@dataclass(frozen=True, slots=True)
class Profile:
    """Windows and hold times; every rule reads its durations from here."""

    name: str
    #: rate window of the recording rules
    window: str
    #: how often the recording rules are evaluated
    interval: str
    #: how far back a regression alert looks for its baseline
    baseline: str
    #: how long each kind of condition must hold before it fires
    hold_latency: str
    hold_regression: str
    hold_quality: str
    hold_down: str
    hold_analysed: str
    hold_energy: str


PRODUCTION = Profile(
    "production",
    window="5m",
    interval="30s",
    baseline="1h",
    hold_latency="10m",
    hold_regression="15m",
    hold_quality="5m",
    hold_down="2m",
    hold_analysed="1m",
    hold_energy="15m",
)
FAST = Profile(
    "fast",
    window="10s",
    interval="1s",
    baseline="45s",
    hold_latency="3s",
    hold_regression="3s",
    hold_quality="2s",
    hold_down="3s",
    hold_analysed="1s",
    hold_energy="3s",
)


def _quantile(q: float, metric: str, window: str) -> str:
    return f"histogram_quantile({q:.2f}, sum by (le, {BY}) (rate({metric}_bucket[{window}])))"


def _mean(metric: str, window: str, *, inverse: bool = False) -> str:
    num, den = ("count", "sum") if inverse else ("sum", "count")
    return (
        f"sum by ({BY}) (rate({metric}_{num}[{window}]))\n  / sum by ({BY}) (rate({metric}_{den}[{window}]))"
    )


def _recording(p: Profile) -> list[dict[str, str]]:
    w = p.window
    out = []
    for q in (0.50, 0.95, 0.99):
        for short, spec in (("ttft", names.TTFT), ("e2e", names.E2E)):
            out.append((f"infermeter:{short}_seconds:p{int(q * 100)}", _quantile(q, spec.name, w)))
    out.sort(key=lambda kv: (0 if "ttft" in kv[0] else 1, kv[0]))
    out += [
        ("infermeter:tpot_seconds:p95", _quantile(0.95, names.TPOT.name, w)),
        ("infermeter:itl_seconds:p95", _quantile(0.95, names.ITL.name, w)),
        ("infermeter:itl_seconds:p99", _quantile(0.99, names.ITL.name, w)),
        ("infermeter:ttft_seconds:mean", _mean(names.TTFT.name, w)),
        ("infermeter:e2e_seconds:mean", _mean(names.E2E.name, w)),
        ("infermeter:decode_tokens_per_second:mean", _mean(names.TPOT.name, w, inverse=True)),
        ("infermeter:requests:rate5m", f"sum by ({BY}) (rate({names.REQUESTS.name}_total[{w}]))"),
        (
            "infermeter:degraded:ratio5m",
            f'sum by ({BY}) (rate({names.REQUESTS.name}_total{{status="degraded"}}[{w}]))\n'
            f"  / sum by ({BY}) (rate({names.REQUESTS.name}_total[{w}]))",
        ),
        ("infermeter:output_tokens:rate5m", f"sum by ({BY}) (rate({names.OUTPUT_TOKENS.name}_total[{w}]))"),
    ]
    return [{"record": name, "expr": expr} for name, expr in out]


def _alert(
    name: str, expr: str, hold: str, severity: str, summary: str, description: str, runbook: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": hold,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "runbook": runbook},
    }


def _alerts(p: Profile) -> list[dict[str, Any]]:
    base = p.baseline
    decode = "infermeter:decode_tokens_per_second:mean"
    ttft = "infermeter:ttft_seconds:mean"
    return [
        _alert(
            "InfermeterTTFTOverSLO",
            f"infermeter:ttft_seconds:p95 > {TTFT_P95_PAGE_S:g}",
            p.hold_latency,
            "critical",
            "p95 TTFT of {{ $labels.scenario }} on {{ $labels.backend }} is {{ $value | humanizeDuration }}",
            f"The p95 time to first token over the last {p.window} has stayed above {TTFT_P95_PAGE_S:g} s "
            f"for {p.hold_latency}.",
            "Check queueing (in-flight, engine slots), prompt lengths and cold starts on the Phases "
            "dashboard; "
            "scale out or cut concurrency.",
        ),
        _alert(
            "InfermeterE2EOverSLO",
            f"infermeter:e2e_seconds:p95 > {E2E_P95_WARN_S:g}",
            p.hold_latency,
            "warning",
            "p95 end-to-end latency of {{ $labels.scenario }} on {{ $labels.backend }} is "
            "{{ $value | humanizeDuration }}",
            f"The p95 E2E latency over the last {p.window} has stayed above {E2E_P95_WARN_S:g} s for "
            f"{p.hold_latency}.",
            "Compare native decode time with wall time (HTTP overhead) and TPOT; a decode slowdown points at "
            "the engine, overhead at the network or client.",
        ),
        _alert(
            "InfermeterDecodeRateRegression",
            f"{decode} < {DECODE_RATE_FLOOR:g} * ({decode} offset {base})\nand ({decode} offset {base}) > 0",
            p.hold_regression,
            "warning",
            "Per-request decode rate of {{ $labels.scenario }} on {{ $labels.backend }} fell to "
            "{{ $value | humanize }} tok/s",
            f"Mean per-request decode rate (1 / TPOT) is under {DECODE_RATE_FLOOR:.0%} of the same series "
            f"{base} earlier, for {p.hold_regression}. Per-request rates do not depend on how many requests "
            "are sent, so a probe schedule cannot hide a slower server.",
            "Look for a model, engine, quantisation or driver change, GPU clocks and temperature; compare "
            "runs with `infermeter analyze`.",
        ),
        _alert(
            "InfermeterTTFTRegression",
            f"{ttft} > {TTFT_CEILING:g} * ({ttft} offset {base})\nand ({ttft} offset {base}) > 0",
            p.hold_regression,
            "warning",
            "Mean TTFT of {{ $labels.scenario }} on {{ $labels.backend }} rose to "
            "{{ $value | humanizeDuration }}",
            f"Mean time to first token is over {TTFT_CEILING:g}× the same series {base} earlier, for "
            f"{p.hold_regression}.",
            "Check prefill time (native), queueing and prompt lengths on the Phases dashboard; a new model "
            "or "
            "engine build, or a lost prompt cache, shows here first.",
        ),
        _alert(
            "InfermeterQualityDrift",
            f"{names.QUALITY_TIER.name} >= 2",
            p.hold_quality,
            "critical",
            "Output quality of {{ $labels.model }} on {{ $labels.task }} drifted (tier {{ $value }})",
            "The offline analyzer rated drift of a candidate against the baseline as concerning (2) or "
            "unacceptable (3); each candidate is its own group, so the alert stands until that group is "
            "retired.",
            "Open the analyzer's report.md for the per-prompt deltas; check quantisation, sampling settings "
            "and the model version.",
        ),
        _alert(
            "InfermeterAnalyzedRegression",
            f"{names.REGRESSION.name} == 1",
            p.hold_analysed,
            "warning",
            "{{ $labels.metric }} of {{ $labels.model }} on {{ $labels.scenario }} is worse than the "
            "baseline",
            "The offline analyzer found the candidate run worse on this metric (Mann-Whitney U, "
            "Holm-adjusted "
            "across metrics).",
            "Open the analyzer's report.md for the medians, their CI and the effect size; diff the two runs' "
            "manifests for what changed.",
        ),
        _alert(
            "InfermeterDegradedRate",
            "infermeter:degraded:ratio5m > 0.05",
            p.hold_quality,
            "warning",
            "{{ $value | humanizePercentage }} of requests to {{ $labels.backend }} are degraded",
            f"More than 5 % of requests ended degraded over {p.window}; `infermeter_requests_total` carries "
            "the reasons.",
            "Break the degraded rate down by reason (timeouts, HTTP 5xx, connection resets) on the overview "
            "dashboard.",
        ),
        _alert(
            "InfermeterBackendDown",
            f"{names.BACKEND_UP.name} == 0",
            p.hold_down,
            "critical",
            "Backend {{ $labels.backend }} cannot be reached",
            "Probes fail before reaching the server (connection refused, reset, or connect timeout).",
            "Check the inference server process and its port; the daemon keeps probing with backoff and logs "
            "`target recovered`.",
        ),
        _alert(
            "InfermeterNoRecentSuccess",
            f"time() - {names.LAST_SUCCESS.name} > 600",
            "1m",
            "critical",
            "No successful request to {{ $labels.backend }} for {{ $value | humanizeDuration }}",
            "The last ok request is more than 10 minutes old.",
            "See the daemon's /status for the last result and its reason.",
        ),
        _alert(
            "InfermeterGPUMemoryHigh",
            f"{names.GPU_MEMORY.name} > 0.9",
            p.hold_quality,
            "warning",
            "GPU {{ $labels.gpu }} memory is {{ $value | humanizePercentage }} used",
            "GPU memory has been above 90 % for a while; the next long context may not fit.",
            "Reduce KV-cache size, concurrency or context length, or move a model to another GPU.",
        ),
        _alert(
            "InfermeterEnergyBlind",
            f"{names.ENERGY_NO_DATA.name} > 0.5",
            p.hold_energy,
            "info",
            "Power sampling cannot see most requests of {{ $labels.scenario }} "
            "({{ $value | humanizePercentage }} no data)",
            "Requests are shorter than the power poll period; per-request energy is not measured.",
            "Use J/token from macro windows, lower --energy-interval, or prefer a GPU with an energy "
            "counter.",
        ),
    ]


def rules(profile: Profile = PRODUCTION) -> dict[str, Any]:
    """The rule file's content for ``profile``."""
    return {
        "groups": [
            {"name": "infermeter-recording", "interval": profile.interval, "rules": _recording(profile)},
            {"name": "infermeter-alerts", "interval": profile.interval, "rules": _alerts(profile)},
        ]
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(profile: Profile = PRODUCTION) -> str:
    """The YAML text of the rule file for ``profile``."""
    head = (
        "# infermeter recording and alerting rules, written by `python grafana/generate.py` from\n"
        f"# grafana/rules.py (profile {profile.name}); change thresholds there. Load with `rule_files:`.\n"
    )
    return head + yaml.dump(rules(profile), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
