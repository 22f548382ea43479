"""Child server processes (the embedded engine, the simulator): start, wait for the address, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import structlog

from agent.core.errors import BackendError

__all__ = ["ChildServer"]

logger = structlog.get_logger(__name__)


class ChildServer:
    """A server in a child process started as ``python -m <module> <json config>``.

    The child prints ``{"address": ..., "pid": ...}`` once it listens and serves until its stdin closes
    or SIGTERM arrives.
    """

    def __init__(self, module: str, what: str, *, log_path: Path | None = None) -> None:
        self.module = module
        self.what = what
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the child while it runs."""
        return self.proc.pid if self.proc is not None else None

    async def start(self, cfg: Mapping[str, object], timeout_s: float) -> str:
        """Spawn the child and return the ``http://host:port`` it listens on."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            json.dumps(cfg),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log if self._log is not None else asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        where = self.log_path or "its log (pass log_path)"
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except TimeoutError:
            await self.stop()
            msg = f"the {self.what} did not listen within {timeout_s:.0f} s; see {where}"
            raise BackendError(msg) from None
        if not line:
            code = await self.proc.wait()
            await self.stop()
            raise BackendError(f"the {self.what} exited with code {code} before listening; see {where}")
        address = str(json.loads(line)["address"])
        logger.info(f"{self.what} listening", address=address, pid=self.proc.pid)
        return address if address.startswith("http") else f"http://{address}"

    async def stop(self) -> None:
        """Close its stdin, then SIGTERM, then SIGKILL after 10 s; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
