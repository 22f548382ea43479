"""The engine series map, the exposition reader (held equal to the client library's parser) and the
per-window figures read back from a run's ``server_metrics.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.core.errors import ConfigError
from agent.core.server_metrics import (
    FILE_HEADER,
    Sample,
    detect_engine,
    label_text,
    parse_exposition,
    read_series,
    series_spec,
    window_figures,
)

DATA = Path(__file__).resolve().parents[3] / "data"

#: shapes the real expositions do not show: escapes, NaN, infinities, timestamps, untyped and summary
#: families, a histogram without a TYPE line, an SGLang-named gauge and histogram
EDGES = """\
# HELP odd_gauge A gauge with awkward label values
# TYPE odd_gauge gauge
odd_gauge{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb"} 1.5
odd_gauge{empty=""} NaN
odd_gauge 7 1700000000000
untyped_thing{a="1"} +Inf
loose_bucket{le="1"} 3
# TYPE unmapped_seconds histogram
unmapped_seconds_bucket{le="0.1"} 1
unmapped_seconds_bucket{le="+Inf"} 2
unmapped_seconds_sum 0.3
unmapped_seconds_count 2
unmapped_seconds_created 1.7e9
# TYPE rpc summary
rpc{quantile="0.5"} 0.2
rpc_sum 4
rpc_count 9
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 3
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 1.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 4.0
sglang:time_to_first_token_seconds_sum{model_name="m"} 6.0
sglang:time_to_first_token_seconds_count{model_name="m"} 4.0
# TYPE things counter
things_total{kind="a"} 12
things_created{kind="a"} 1.7e9
"""


def reference(text: str) -> list[Sample]:
    """What the client library's parser gives, with the same keeping rules."""
    out = []
    for family in text_string_to_metric_families(text):
        mapped = series_spec(family.name) is not None
        for s in family.samples:
            if s.name.endswith("_created") or math.isnan(s.value):
                continue
            if not mapped and family.type in ("histogram", "gaugehistogram") and s.name.endswith("_bucket"):
                continue
            out.append(Sample(s.name, label_text(s.labels), float(s.value)))
    return out


@pytest.mark.parametrize("name", ["vllm_0.32_metrics.txt", "llamacpp_metrics.txt"])
def test_the_reader_equals_the_client_library_on_real_expositions(name: str) -> None:
    text = (DATA / name).read_text()
    got = parse_exposition(text)
    assert got == reference(text)
    assert len(got) > 10


def test_the_reader_equals_the_client_library_on_awkward_shapes() -> None:
    got = parse_exposition(EDGES)
    assert got == reference(EDGES)
    names = {s.name for s in got}
    assert "unmapped_seconds_bucket" not in names and "unmapped_seconds_sum" in names
    assert "sglang:time_to_first_token_seconds_bucket" in names  # mapped: its buckets are kept
    assert not any(n.endswith("_created") for n in names)
    odd = next(s for s in got if s.name == "odd_gauge" and "quote" in s.labels)
    assert 'say \\"hi\\"' in odd.labels


@pytest.mark.parametrize("bad", ["this is not { metrics", 'm{a="1"} notanumber', 'm{a="1} 3'])
def test_a_malformed_exposition_is_one_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a Prometheus text exposition"):
        parse_exposition(bad)


def test_engines_are_told_apart_by_their_series() -> None:
    assert (
        detect_engine(s.name for s in parse_exposition((DATA / "vllm_0.32_metrics.txt").read_text()))
        == "vllm"
    )
    assert (
        detect_engine(s.name for s in parse_exposition((DATA / "llamacpp_metrics.txt").read_text()))
        == "llamacpp"
    )
    assert detect_engine(["tgi_queue_size", "tgi_batch_current_size"]) == "tgi"
    assert detect_engine(["sglang:num_queue_reqs"]) == "sglang"
    assert detect_engine(["http_requests_total"]) is None
    spec = series_spec("vllm:prefix_cache_hits_total")
    assert spec is not None and spec.concept == "prefix_hits"
    assert series_spec("vllm:e2e_request_latency_seconds_bucket").concept == "e2e"  # type: ignore[union-attr]


def write(path: Path, rows: list[tuple[float, str, str, float]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FILE_HEADER)
        for t, name, labels, value in rows:
            w.writerow((f"{t:.3f}", "http://s/metrics", name, labels, repr(value)))
    return path


def test_window_figures_from_changes_only_rows(tmp_path: Path) -> None:
    lab = '{model_name="m"}'
    rows = [
        # before the window: the held values at its start
        (90.0, "vllm:num_requests_waiting", lab, 0.0),
        (90.0, "vllm:num_requests_running", lab, 0.0),
        (90.0, "vllm:kv_cache_usage_perc", lab, 0.1),
        (90.0, "vllm:prefix_cache_queries_total", lab, 1000.0),
        (90.0, "vllm:prefix_cache_hits_total", lab, 100.0),
        (90.0, "vllm:num_preemptions_total", lab, 2.0),
        (100.0, "vllm:num_requests_waiting", lab, 0.0),
        # inside: changes only
        (101.0, "vllm:num_requests_waiting", lab, 3.0),
        (101.0, "vllm:num_requests_running", lab, 2.0),
        (102.0, "vllm:kv_cache_usage_perc", lab, 0.9),
        (103.0, "vllm:num_requests_waiting", lab, 0.0),
        (104.0, "vllm:prefix_cache_queries_total", lab, 1400.0),
        (104.0, "vllm:prefix_cache_hits_total", lab, 400.0),
        (104.0, "vllm:num_preemptions_total", lab, 5.0),
        # a histogram first seen inside the window starts from zero there
        (102.0, "vllm:time_to_first_token_seconds_bucket", '{le="0.1",model_name="m"}', 1.0),
        (102.0, "vllm:time_to_first_token_seconds_bucket", '{le="1.0",model_name="m"}', 3.0),
        (102.0, "vllm:time_to_first_token_seconds_bucket", '{le="+Inf",model_name="m"}', 4.0),
        (102.0, "vllm:time_to_first_token_seconds_sum", lab, 2.0),
        (102.0, "vllm:time_to_first_token_seconds_count", lab, 4.0),
        (105.0, "vllm:num_requests_waiting", lab, 0.0),  # the closing full scrape
        # after the window: never counted
        (200.0, "vllm:num_preemptions_total", lab, 50.0),
    ]
    f = read_series(write(tmp_path / "s.csv", rows))
    got = window_figures(f, 100.0, 105.0)
    assert got["engine"] == "vllm"
    assert got["waiting"] == {
        "peak": 3.0,
        "mean": pytest.approx(2 * 3.0 / 6),
    }  # at scrapes 100, 101, 102, 103, 104, 105
    assert got["kv_usage"]["peak"] == 0.9  # type: ignore[index]
    assert got["preemptions"] == 3.0
    assert got["prefix_hit_ratio"] == pytest.approx(300 / 400)
    ttft = got["ttft"]
    assert ttft["count"] == 4.0 and ttft["mean_s"] == pytest.approx(0.5)  # type: ignore[index]
    # histogram_quantile: rank 2 of 4 falls in (0.1, 1.0] holding ranks 1..3 -> 0.1 + 0.9 * (1/2)
    assert ttft["p50_s"] == pytest.approx(0.55)  # type: ignore[index]


def test_a_counter_reset_inside_the_window_counts_as_a_restart(tmp_path: Path) -> None:
    values = [(0.0, 10.0), (1.0, 12.0), (2.0, 1.0), (3.0, 4.0)]
    rows = [(t, "vllm:num_preemptions_total", "", v) for t, v in values]
    f = read_series(write(tmp_path / "s.csv", rows))
    assert window_figures(f, 0.5, 3.0)["preemptions"] == 2.0 + 1.0 + 3.0


def test_llamacpp_hit_ratio_counts_cached_over_all_prompt_tokens(tmp_path: Path) -> None:
    rows = [
        (0.0, "llamacpp:prompt_tokens_total", "", 0.0),
        (0.0, "llamacpp:prompt_tokens_cached_total", "", 0.0),
        (5.0, "llamacpp:prompt_tokens_total", "", 223.0),
        (5.0, "llamacpp:prompt_tokens_cached_total", "", 410.0),
    ]
    f = read_series(write(tmp_path / "s.csv", rows))
    assert window_figures(f, 0.0, 5.0)["prefix_hit_ratio"] == pytest.approx(410 / 633)


def test_a_damaged_row_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", [(0.0, "vllm:num_requests_waiting", "", 1.0)])
    with path.open("a") as fh:
        fh.write("1.0,http://s/metrics,vllm:num_requests_waiting,,not-a-num\n2.0,trunc")
    f = read_series(path)
    assert window_figures(f, 0.0, 3.0)["waiting"]["peak"] == 1.0  # type: ignore[index]
