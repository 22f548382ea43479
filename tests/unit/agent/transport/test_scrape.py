"""The server scraper against a stand-in endpoint on loopback: changes only between full marks, a cut
when an exposition is too big, errors counted and never fatal, and every row on disk as it goes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.server_metrics import read_series, window_figures
from agent.transport import scrape
from agent.transport.scrape import Endpoint, ServerScraper, metrics_url_of
from tests.standin_http import serving

DATA = Path(__file__).resolve().parents[3] / "data"


class Exposition:
    """What the stand-in serves next (a status and a body), changed by the test."""

    def __init__(self) -> None:
        self.status = 200
        self.body = ""
        self.hits = 0


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Exposition]]:
    state = Exposition()

    def answer() -> tuple[int, str]:
        state.hits += 1
        return state.status, state.body

    with serving(answer) as url:
        yield url, state


def gauge(waiting: float, hits: float) -> str:
    return (
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
        "# TYPE vllm:prefix_cache_hits counter\n"
        f'vllm:prefix_cache_hits_total{{model_name="m"}} {hits}\n'
        "# TYPE vllm:prefix_cache_queries counter\n"
        'vllm:prefix_cache_queries_total{model_name="m"} 100.0\n'
    )


def test_only_changes_are_written_between_full_marks(
    endpoint: tuple[str, Exposition], tmp_path: Path
) -> None:
    url, state = endpoint
    path = tmp_path / "server_metrics.csv"
    state.body = gauge(0, 10)
    s = ServerScraper([Endpoint(url, given=True)], path, interval_s=60)
    s.start()  # a full scrape: three rows and the header
    assert path.read_text().count("\n") == 4
    s.scrape(full=False)  # nothing changed
    assert path.read_text().count("\n") == 4
    state.body = gauge(3, 40)
    s.scrape(full=False)  # two changed
    assert path.read_text().count("\n") == 6  # on disk already, before stop
    s.stop()  # the closing full scrape writes all three again
    assert path.read_text().count("\n") == 9
    facts = s.describe()
    assert facts["endpoints"][0]["engine"] == "vllm" and facts["endpoints"][0]["scrapes"] == 4
    f = read_series(path)
    got = window_figures(f, 0, 2e10)
    assert got["waiting"]["peak"] == 3.0 and got["prefix_hits"] == 30.0  # type: ignore[index]


def test_errors_are_counted_and_scraping_goes_on(endpoint: tuple[str, Exposition], tmp_path: Path) -> None:
    url, state = endpoint
    state.body = gauge(1, 1)
    s = ServerScraper([Endpoint(url, given=True)], tmp_path / "m.csv", interval_s=60)
    s.start()
    state.status = 500
    s.scrape(full=False)
    state.status, state.body = 200, "garbage { here"
    s.scrape(full=False)
    state.body = gauge(2, 2)
    s.scrape(full=False)
    s.stop()
    ep = s.describe()["endpoints"][0]
    assert ep["errors"] == 2 and ep["scrapes"] == 3 and "HTTP 500" not in ep["last_error"]
    assert "not a Prometheus text exposition" in ep["last_error"]


def test_a_huge_exposition_is_cut_and_counted(
    endpoint: tuple[str, Exposition], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = endpoint
    monkeypatch.setattr(scrape, "MAX_SAMPLES", 50)
    state.body = "".join(f"thing_{i} {i}\n" for i in range(500))
    s = ServerScraper([Endpoint(url, given=True)], tmp_path / "m.csv", interval_s=60)
    s.start()
    s.stop()
    ep = s.describe()["endpoints"][0]
    assert ep["cut_scrapes"] == 2 and ep["series"] == 50


def test_the_thread_scrapes_on_its_interval(endpoint: tuple[str, Exposition], tmp_path: Path) -> None:
    url, state = endpoint
    state.body = (DATA / "vllm_0.32_metrics.txt").read_text()
    s = ServerScraper([Endpoint(url, given=True)], tmp_path / "m.csv", interval_s=0.1)
    s.start()
    deadline = threading.Event()
    for _ in range(100):
        if state.hits >= 4:
            break
        deadline.wait(0.05)
    s.stop()
    assert state.hits >= 4 and s.describe()["endpoints"][0]["errors"] == 0


def test_probe_says_why_an_endpoint_is_not_one(endpoint: tuple[str, Exposition]) -> None:
    url, state = endpoint
    state.status = 404
    assert "HTTP 404" in (ServerScraper.probe(url) or "")
    state.status, state.body = 200, ""
    assert "serves no metrics" in (ServerScraper.probe(url) or "")
    assert "could not be read" in (ServerScraper.probe("http://127.0.0.1:9/metrics", 0.5) or "")


def test_the_metrics_url_sits_at_the_servers_root() -> None:
    assert metrics_url_of("http://h:8000/v1") == "http://h:8000/metrics"
    assert metrics_url_of("http://h:8000/") == "http://h:8000/metrics"
    assert metrics_url_of("http://h:8000/proxy/v1/") == "http://h:8000/proxy/metrics"
