"""``collab serve`` as a real subprocess, for tests of the command line, restarts and clusters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from services import ServiceProcess


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    """Our environment without any COLLAB_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLAB_")}
    env.update(extra or {})
    return env


def collab(*args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``python -m collab ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "collab", *args], cwd=cwd, env=_env(env),
        capture_output=True, text=True, timeout=timeout,
    )


class CollabProcess(ServiceProcess):
    """A ``collab serve`` child run in ``cwd`` (so ``./data`` lands there) with ``env``.

    Restartable on the same port and data; settings come from ``COLLAB_*``
    variables in ``env``, as an operator would give them.
    """

    name = "collab"

    def __init__(self, cwd: Path, env: dict[str, str] | None = None, port: int | None = None):
        super().__init__(cwd, port)
        self.cwd = Path(cwd)
        self.env = dict(env or {})

    @property
    def workdir(self) -> Path:
        return self.cwd

    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "collab", "serve", "--port", str(self.port)]

    def environ(self) -> dict[str, str]:
        return _env(self.env)

    def ping(self) -> None:
        with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
            assert response.status == 200

    def start(self) -> CollabProcess:  # type: ignore[override]
        super().start()
        return self

    def output(self) -> str:
        return self.log_tail(lines=10_000)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def log_file(self) -> Path:
        """Where the child's stdout and stderr go."""
        return self._log

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        return self._proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, connections just die."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def token(self, user_id: str, *args: str) -> str:
        result = collab("token", user_id, *args, cwd=self.cwd, env=self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()
