"""``collab serve`` as a real subprocess, for tests of the command line and restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services import free_port


def collab(*args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``python -m collab ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "collab", *args], cwd=cwd, env=_env(env),
        capture_output=True, text=True, timeout=timeout,
    )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLAB_")}
    env.update(extra or {})
    return env


class CollabProcess:
    """A ``collab serve`` child on a fixed port; restartable on the same port and data."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.cwd = cwd
        self.env = dict(env or {})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = cwd / f"collab-{self.port}.log"

    def start(self, timeout: float = 20) -> CollabProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collab", "serve", "--port", str(self.port)],
                cwd=self.cwd, env=_env(self.env), stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collab exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)  # polling a starting process: no event to await
        self.kill()
        raise RuntimeError(f"collab did not answer /healthz in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def token(self, user_id: str, *args: str) -> str:
        result = collab("token", user_id, *args, cwd=self.cwd, env=self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()
