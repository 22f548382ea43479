"""The rules pass promtool, and every dashboard panel's PromQL returns series from a real Prometheus
scraping a real run (with the rules loaded and a replayed power trace for the energy panels)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import start_cli, wait_for
from tests.integration.test_prometheus import free_port, get, promql
from tests.promtools import Prometheus, binary, grafana_module

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "grafana" / "prometheus"
VARIABLES = {"$backend": ".*", "$model": ".*", "$scenario": ".*", "$__rate_interval": "1m", "$__range": "5m"}


def promtool_passes(folder: Path) -> None:
    """``promtool check rules rules.yml`` and ``promtool test rules tests.yml`` in ``folder`` both pass."""
    for verb, file in (("check", "rules.yml"), ("test", "tests.yml")):
        done = subprocess.run(
            [str(binary("promtool")), verb, "rules", file],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool_passes(RULES)


def _firing(alert: str, backend: str, severity: str) -> str:
    return (
        f'ALERTS{{alertname="{alert}",alertstate="firing",backend="{backend}",model="m",'
        f'scenario="chat",severity="{severity}"}}'
    )


def test_promtool_checks_and_unit_tests_the_fast_profile(tmp_path: Path) -> None:
    """The fast profile fires the regression and latency alerts on its own clock (1 s for 1 min)."""
    rules = grafana_module("rules")
    (tmp_path / "rules.yml").write_text(rules.render(rules.FAST))
    series = {
        # 20 ms TPOT then 80 ms; steady: TPOT +30 % at half the requests (quiet)
        'infermeter_tpot_seconds_sum{backend="slow",model="m",scenario="chat"}': "0+0.2x60 12.8+0.8x40",
        'infermeter_tpot_seconds_count{backend="slow",model="m",scenario="chat"}': "0+10x100",
        'infermeter_tpot_seconds_sum{backend="steady",model="m",scenario="chat"}': "0+0.2x60 12.13+0.13x40",
        'infermeter_tpot_seconds_count{backend="steady",model="m",scenario="chat"}': "0+10x60 605+5x40",
        'infermeter_ttft_seconds_sum{backend="slow",model="m",scenario="chat"}': "0+1x60 62+2x40",
        'infermeter_ttft_seconds_count{backend="slow",model="m",scenario="chat"}': "0+10x100",
        'infermeter_ttft_seconds_bucket{le="1",backend="hot",model="m",scenario="chat"}': "0x100",
        'infermeter_ttft_seconds_bucket{le="1.5",backend="hot",model="m",scenario="chat"}': "0+10x100",
        'infermeter_ttft_seconds_bucket{le="+Inf",backend="hot",model="m",scenario="chat"}': "0+10x100",
    }
    cases = [
        ("InfermeterDecodeRateRegression", "slow", "warning"),
        ("InfermeterTTFTRegression", "slow", "warning"),
        ("InfermeterTTFTOverSLO", "hot", "critical"),
    ]
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1s",
        "tests": [
            {
                "interval": "1s",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing",backend=~"slow|steady"}',
                        "eval_time": "58s",
                        "exp_samples": [],
                    },
                    *[
                        {
                            "expr": _firing(alert, backend, severity).replace(f',backend="{backend}"', ""),
                            "eval_time": "95s",
                            "exp_samples": [{"labels": _firing(alert, backend, severity), "value": 1}],
                        }
                        for alert, backend, severity in cases
                    ],
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    promtool_passes(tmp_path)


def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def power_trace(path: Path) -> Path:
    rows, energy = ["timestamp_s,gpu,power_w,energy_mj,util_pct,mem_used_mb,mem_total_mb,temp_c"], 0
    for i in range(3000):
        power = 20.0 if i < 10 else 150.0
        rows.append(f"{i / 10:.1f},0,{power},{energy},{0 if i < 10 else 85},9000,24000,60")
        energy += int(power * 100)
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def prometheus_on_a_run(tmp_path: Path, cache_dir: Path) -> Any:
    port = free_port()
    args = ["run", "chat", "--backend", "sim", "--backend-arg", "ttft_ms=30", "--backend-arg", "itl_ms=5"]
    args += [
        "--rate",
        "4",
        "--arrival",
        "constant",
        "--duration",
        "30s",
        "--max-tokens",
        "64",
        "--no-progress",
    ]
    args += ["--energy", f"replay:{power_trace(tmp_path / 'power.csv')}", "--energy-baseline", "1s"]
    args += ["--slo-ttft-ms", "500"]  # the goodput panel needs an objective
    args += [
        "--serve-metrics",
        "--metrics-port",
        str(port),
        "--metrics-linger",
        "60s",
        "--out",
        str(tmp_path / "r"),
    ]
    run = start_cli(args, cache_dir)
    prom = Prometheus(
        tmp_path, free_port(), [f"127.0.0.1:{port}"], job="infermeter", rules=RULES / "rules.yml"
    )
    try:
        yield prom.api
    finally:
        prom.stop()
        run.terminate()
        run.communicate(timeout=30)


def test_every_panel_query_parses_and_returns_series(prometheus_on_a_run: Any) -> None:
    api = prometheus_on_a_run
    queries: dict[str, str] = {}
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                queries[f"{path.stem} / {panel['title']} / {target['refId']}"] = substitute(target["expr"])

    def answered(query: str) -> bool:
        try:
            return bool(promql(api, query))
        except OSError:
            return False

    # the quality panels read what `infermeter analyze` publishes, the compile panels what an in-process
    # `--compile` run exports (tests/unit/exporters/test_prometheus.py): a simulator run has neither;
    # and the fleet dashboard's server panels read vLLM's own series (checked against a real vLLM in
    # tests/integration/test_vllm.py)
    server = ("fleet / Server ", "fleet / Canary TTFT p95 beside the server's own TTFT p95 / B")
    live = {
        k: q
        for k, q in queries.items()
        if not k.startswith("quality") and "ompile" not in k and not k.startswith(server)
    }
    wait_for(lambda: answered("infermeter:ttft_seconds:p95"), 90, "the recording rules to produce series")
    deadline = time.monotonic() + 90
    empty = list(live)
    while empty and time.monotonic() < deadline:
        empty = [k for k, q in live.items() if not answered(q)]
        time.sleep(1)
    assert empty == []  # panels with no series after 90 s of a live run
    for key, query in queries.items():  # every query parses, the quality ones included
        body = json.loads(get(f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
        assert body["status"] == "success", key
