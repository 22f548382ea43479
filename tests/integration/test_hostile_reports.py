"""A hostile server's strings in every report: a model id and answers carrying script, markup, table
pipes, newlines and terminal escapes. Runs and an analysis against it are written; every report.html is
opened in a real Chromium, where no script of the server's runs and no element of its is made; the
Markdown tables keep their columns; the console shows no escape sequence."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser import open_page
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow

#: Each piece would do something if a page, a Markdown table or a terminal took it as its own.
HOSTILE = (
    '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    "<b id=injected>bold</b> | cell | \n| row |\x1b[31m red \x1b]0;title\x07 [bold]markup[/bold]"
)
PROBES = {
    "pwned": "String(window.pwned)",
    "injected": "document.querySelectorAll('#injected, img, iframe, object, embed').length",
    "scripts": "[...document.scripts].filter(s => s.textContent.trim().startsWith('window.pwned')).length",
    "text": "document.body.innerText.includes('<img src=x onerror=window.pwned=3>')",
}
#: Run directories named like markup: their labels reach every page and table too.
BASE, CAND = "base<img src=x onerror=window.pwned=3>", "cand<b id=injected>x|y"


class _Hostile(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, ctype: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send("application/json", json.dumps({"object": "list", "data": [{"id": HOSTILE}]}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        frames = [
            {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in ("Answer: ", HOSTILE, " done")
        ]
        frames.append(
            {
                "choices": [{"index": 0, "delta": {}, "finish_reason": HOSTILE[:20]}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3},
            }
        )
        body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"
        self._send("text/event-stream", body)


@contextlib.contextmanager
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def assert_tables_whole(markdown: str) -> None:
    """Every row of every table has its header's columns; no raw tag of the server's is in the text."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|--"):
            width = _pipes(lines[i - 1])
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                assert _pipes(row) == width, row
    assert "<script>" not in markdown and "<img" not in markdown and "\x1b" not in markdown


def assert_page_safe(page: Path) -> None:
    report = open_page(page, probes=PROBES)
    assert report.values["pwned"] == "undefined", "a script of the server's ran"
    assert report.values["injected"] == 0, "an element of the server's was made"
    assert report.values["scripts"] == 0
    assert report.values["text"] is True, "the server's text is shown as text"
    assert report.errors == [], report.errors


def test_every_report_keeps_a_hostile_servers_strings_as_text(tmp_path: Path, cache_dir: Path) -> None:
    with hostile_server() as url:
        for name in (BASE, CAND):
            proc = run_cli(
                [
                    "run",
                    "chat",
                    "--backend",
                    "openai",
                    "--base-url",
                    url,
                    "--requests",
                    "6",
                    "--concurrency",
                    "2",
                    "--warmup",
                    "0",
                    "--energy",
                    "off",
                    "--no-progress",
                    "--out",
                    str(tmp_path / name),
                ],
                cache_dir,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "\x1b" not in proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / BASE / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert all("\x1b" not in r["model"] and r["text_sanitized"] for r in records)
    assert_page_safe(tmp_path / BASE / "report.html")

    out = tmp_path / "analysis"
    args = ["analyze", str(tmp_path / CAND), "--baseline", str(tmp_path / BASE), "--out", str(out)]
    proc = run_cli([*args, "--no-progress", "--no-semscore", "--resamples", "200", "--no-plots"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b" not in proc.stdout + proc.stderr
    assert_tables_whole((out / "report.md").read_text(encoding="utf-8"))
    assert_page_safe(out / "report.html")

    proc = run_cli(["summarize", str(tmp_path / BASE), "--html"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b" not in proc.stdout + proc.stderr
    assert_page_safe(tmp_path / BASE / "report.html")
