"""The analyzer's quality and regression series reach a real Pushgateway, a real Prometheus scrapes them,
and the alert rules shipped in grafana/prometheus/rules.yml evaluate on them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.integration.conftest import wait_for
from tests.integration.test_prometheus import free_port, get, promql
from tests.promtools import Prometheus
from tests.unit.analysis.test_analyze_cli import ANSWERS, write_run

pytestmark = pytest.mark.slow

RULES = Path(__file__).resolve().parents[2] / "grafana" / "prometheus" / "rules.yml"


def analyze_and_push(candidate: Path, base: Path, url: str) -> None:
    args = ["analyze", str(candidate), "--baseline", str(base), "--pushgateway", url]
    assert main([*args, "--no-semscore", "--no-progress", "--no-plots", "--resamples", "500"]) == 0


def alerts(api: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"{api}/api/v1/alerts"))
    return list(body["data"]["alerts"])


def test_pushed_drift_and_regression_raise_alerts(tmp_path: Path, pushgateway: tuple[str, int]) -> None:
    url, port = pushgateway
    base = write_run(tmp_path / "base", seed=1)
    worse = write_run(tmp_path / "worse", slow=1.5, answers={**ANSWERS, "q1": "Kyoto", "m1": "B"}, seed=3)
    analyze_and_push(worse, base, url)
    pushed = get(f"{url}/metrics")
    labels = 'candidate="worse",instance="",job="infermeter_analyze",model="m",task="all"'
    assert f"infermeter_quality_tier{{{labels}}} 3" in pushed

    prom = Prometheus(
        tmp_path, free_port(), [f"127.0.0.1:{port}"], job="pushgateway", rules=RULES, honor_labels=True
    )
    try:
        wait_for(lambda: _up(prom.api), 60, "Prometheus to scrape the Pushgateway")
        tiers = {
            r["metric"]["task"]: float(r["value"][1]) for r in promql(prom.api, "infermeter_quality_tier")
        }
        assert tiers["all"] == 3.0 and tiers["multiple_choice"] == 3.0
        assert all(
            r["metric"]["job"] == "infermeter_analyze" for r in promql(prom.api, "infermeter_quality_tier")
        )
        worse_metrics = {
            r["metric"]["metric"] for r in promql(prom.api, "infermeter_regression_verdict == 1")
        }
        assert {"ttft_ms", "e2e_ms"} <= worse_metrics

        def raised() -> bool:
            names = {
                a["labels"]["alertname"] for a in alerts(prom.api) if a["state"] in ("pending", "firing")
            }
            return {"InfermeterQualityDrift", "InfermeterAnalyzedRegression"} <= names

        wait_for(raised, 30, "the quality and regression alerts to evaluate true")
        drift_alert = next(
            a
            for a in alerts(prom.api)
            if a["labels"]["alertname"] == "InfermeterQualityDrift" and a["labels"]["task"] == "all"
        )
        assert drift_alert["labels"]["model"] == "m" and drift_alert["labels"]["severity"] == "critical"

        # a second, clean candidate of the same model is a group of its own: the drift alert stands
        fixed = write_run(tmp_path / "fixed", seed=2)
        analyze_and_push(fixed, base, url)
        wait_for(
            lambda: len(promql(prom.api, 'infermeter_quality_tier{task="all"}')) == 2, 30, "both candidates"
        )
        tiers_now = {
            r["metric"]["candidate"]: float(r["value"][1])
            for r in promql(prom.api, 'infermeter_quality_tier{task="all"}')
        }
        assert tiers_now == {"worse": 3.0, "fixed": 0.0}
        assert any(a["labels"]["alertname"] == "InfermeterQualityDrift" for a in alerts(prom.api))

        # retiring the drifted candidate's group (as docs/metrics-and-alerts.md says) clears its alert
        retire = urllib.request.Request(
            f"{url}/metrics/job/infermeter_analyze/model/m/candidate/worse", method="DELETE"
        )
        with urllib.request.urlopen(retire, timeout=5) as r:
            assert r.status == 202
        wait_for(
            lambda: (
                [r["metric"]["candidate"] for r in promql(prom.api, 'infermeter_quality_tier{task="all"}')]
                == ["fixed"]
            ),
            30,
            "the retired group to disappear",
        )
        wait_for(
            lambda: not [a for a in alerts(prom.api) if a["labels"]["alertname"] == "InfermeterQualityDrift"],
            30,
            "the drift alert to clear",
        )
    finally:
        prom.stop()


def _up(api: str) -> bool:
    try:
        rows = promql(api, 'up{job="pushgateway"}')
    except (OSError, urllib.error.URLError):
        return False
    return bool(rows) and rows[0]["value"][1] == "1" and bool(promql(api, "infermeter_quality_tier"))
