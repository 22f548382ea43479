"""Dashboards and rules are code: valid against Grafana's schema, generated (never hand-edited), and
speaking only metric names the exporter's catalogue owns."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from exporters import names
from tests.promtools import grafana_module

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "grafana" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "grafana" / "prometheus" / "tests.yml"
SCHEMA = json.loads((ROOT / "tests/data/grafana/dashboard.jsonschema.json").read_text())
METRIC = re.compile(r"\binfermeter[_:][a-z0-9_:]+")


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_there_are_the_five_dashboards() -> None:
    assert [p.stem for p in DASHBOARDS] == ["energy", "fleet", "overview", "phases", "quality"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_each_dashboard_validates_against_the_grafana_schema(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    errors = [
        f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(dashboard)
    ]
    assert errors == []
    assert dashboard["panels"] and all(exprs(dashboard))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert {p.name: p.read_text() for p in DASHBOARDS} == generate.render()  # run grafana/generate.py


def test_the_committed_rules_are_the_production_profile() -> None:
    generated = grafana_module("rules")
    assert RULES.read_text() == generated.render(generated.PRODUCTION)  # run grafana/generate.py


def test_the_fast_profile_is_the_same_rules_on_shorter_clocks() -> None:
    generated = grafana_module("rules")
    prod, fast = generated.rules(generated.PRODUCTION), generated.rules(generated.FAST)
    names_of = [[r.get("record") or r.get("alert") for r in g["rules"]] for g in prod["groups"]]
    assert names_of == [[r.get("record") or r.get("alert") for r in g["rules"]] for g in fast["groups"]]
    thresholds = [r.get("labels") for g in prod["groups"] for r in g["rules"]]
    assert thresholds == [r.get("labels") for g in fast["groups"] for r in g["rules"]]
    assert (
        "[5m]" in str(prod)
        and "[10s]" in str(fast)
        and "offset 1h" in str(prod)
        and "offset 45s" in str(fast)
    )


def test_every_metric_in_dashboards_and_rules_is_owned_by_the_catalogue() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    exposed = names.exposed_names() | {s.name for s in (*names.CATALOGUE, *names.ANALYZER)}
    used = {m for d in DASHBOARDS for e in exprs(json.loads(d.read_text())) for m in METRIC.findall(e)}
    used |= {m for r in rules() for m in METRIC.findall(r["expr"])}
    unknown = {m for m in used if m not in exposed and m not in recorded}
    assert unknown == set()
    assert {m for m in used if ":" in m} <= recorded
    assert names.TTFT.name in str(used) and names.QUALITY_TIER.name in used


def test_every_alert_says_how_bad_what_and_what_to_do() -> None:
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 9
    for a in alerts:
        assert a.get("for"), a["alert"]
        assert a["labels"]["severity"] in ("info", "warning", "critical")
        assert {"summary", "description", "runbook"} <= set(a["annotations"]), a["alert"]


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c.get("exp_alerts")}
    assert fired == {r["alert"] for r in rules() if "alert" in r}
