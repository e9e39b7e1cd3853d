"""What ``collab serve`` writes on stderr."""

from __future__ import annotations

import urllib.error
import urllib.request

from process import CollabProcess


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_node(tmp_path, **env: str) -> list[str]:
    """Start ``collab serve``, send it one request python-engineio logs an error for
    (an unknown transport), stop it; return its output lines."""
    node = CollabProcess(tmp_path, env)
    node.start()
    try:
        assert fetch_status(node.url + "/socket.io/?EIO=4&transport=bogus") == 400
        assert node.terminate() == 0
    finally:
        node.kill()
    return node.output().splitlines()


def test_engineio_errors_come_once_and_formatted(tmp_path):
    lines = run_node(tmp_path)
    # python-engineio's own stderr handler printed this a second time, raw
    transport = [line for line in lines if "Invalid transport" in line]
    assert len(transport) == 1, lines
    assert transport[0].endswith(
        " ERROR engineio.server: Invalid transport (further occurrences of this error will be"
        " logged with level INFO)"
    )
