"""TCP connections as an attacker opens them: slowloris, hoarding from one address, and a
process out of file descriptors, with raw sockets against a real server."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import sys
import time
from pathlib import Path

import pytest
from harness import WAIT, make_settings
from process import CollabProcess

from collab.listener import peer_key

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture
def settings(request: pytest.FixtureRequest):
    """Test settings plus the overrides a test parametrizes ``settings`` with."""
    return make_settings(**getattr(request, "param", {}))


class Raw:
    """One plain TCP connection to the server, speaking HTTP/1.1 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, data: bytes = HEALTHZ) -> int:
        """Send a request and read its whole response; return the status code."""
        self.writer.write(data)
        status = await asyncio.wait_for(self.reader.readline(), WAIT)
        assert status.startswith(b"HTTP/1.1 "), status
        length = 0
        while (line := await asyncio.wait_for(self.reader.readline(), WAIT)) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await asyncio.wait_for(self.reader.readexactly(length), WAIT)
        return int(status.split()[1])

    async def closed_by_server(self, timeout: float = WAIT) -> bool:
        """Wait for the server to close this connection; ``False`` if it did not in time."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionResetError:
            return True
        assert data == b"", data  # nothing was asked, so nothing may be answered
        return True

    def close(self) -> None:
        self.writer.close()


# -- slowloris: header and body timeouts ------------------------------------------------

QUICK_TIMEOUTS = {"header_timeout": 0.5, "body_timeout": 0.5}


@pytest.mark.parametrize("settings", [QUICK_TIMEOUTS], indirect=True)
async def test_headers_never_finished_are_closed_after_header_timeout(server):
    raw = await Raw.open(server.server.port)
    raw.writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # no blank line, ever
    start = time.monotonic()
    assert await raw.closed_by_server()
    assert 0.4 <= time.monotonic() - start < 3


@pytest.mark.parametrize("settings", [QUICK_TIMEOUTS], indirect=True)
async def test_header_timeout_counts_from_the_start_not_from_the_last_byte(server):
    raw = await Raw.open(server.server.port)
    start = time.monotonic()
    closing = asyncio.ensure_future(raw.closed_by_server())
    # a byte every 50 ms: never idle, never done
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:
        if closing.done():
            break
        raw.writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    assert await closing
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("settings", [QUICK_TIMEOUTS], indirect=True)
async def test_body_never_finished_is_closed_after_body_timeout(server):
    raw = await Raw.open(server.server.port)
    raw.writer.write(b"POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n")
    raw.writer.write(b"x" * 10)
    start = time.monotonic()
    assert await raw.closed_by_server()
    assert 0.4 <= time.monotonic() - start < 3


async def test_a_complete_request_is_served_with_the_default_timeouts(server):
    raw = await Raw.open(server.server.port)
    assert await raw.request() == 200
    assert await raw.request() == 200  # kept alive
    raw.close()


# -- caps per address and in all --------------------------------------------------------


@pytest.mark.parametrize("settings", [{"max_connections_per_ip": 4}], indirect=True)
async def test_per_ip_cap_closes_the_next_connection_and_a_close_frees_a_slot(server, caplog):
    caplog.set_level(logging.WARNING, logger="collab")
    port = server.server.port
    first = [await Raw.open(port) for _ in range(4)]
    for raw in first:
        assert await raw.request() == 200
    extras = [await Raw.open(port) for _ in range(3)]
    for extra in extras:
        assert await extra.closed_by_server(timeout=1.0)
    for raw in first:  # the first four stay open and served
        assert await raw.request() == 200

    # The server closes after a Connection: close response and gives the slot back in
    # the same step, so by the time this client sees EOF a new connection fits.
    assert await first[0].request(HEALTHZ[:-2] + b"Connection: close\r\n\r\n") == 200
    assert await first[0].closed_by_server()
    again = await Raw.open(port)
    assert await again.request() == 200
    assert await (await Raw.open(port)).closed_by_server(timeout=1.0)

    refusals = [r for r in caplog.records if "max_connections_per_ip" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # once, not per refusal
    for raw in [*first[1:], again]:
        raw.close()


@pytest.mark.parametrize(
    "settings",
    [{"max_connections": 4, "max_connections_per_ip": 2, "trusted_proxies": ["127.0.0.1"]}],
    indirect=True,
)
async def test_trusted_proxy_counts_only_toward_max_connections(server):
    port = server.server.port
    conns = [await Raw.open(port) for _ in range(4)]  # past the per-IP cap of 2
    for raw in conns:
        assert await raw.request() == 200
    assert await (await Raw.open(port)).closed_by_server(timeout=1.0)  # the global cap
    for raw in conns:
        assert await raw.request() == 200
        raw.close()


@pytest.mark.parametrize(
    "settings", [{"max_connections_per_ip": 2, "trusted_proxies": ["10.0.0.0/8"]}],
    indirect=True,
)
async def test_per_ip_cap_counts_the_peer_whatever_it_forwards(server):
    port = server.server.port
    forged = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Real-Ip: 10.1.2.3\r\n" \
             b"X-Forwarded-For: 10.1.2.3\r\n\r\n"
    conns = [await Raw.open(port) for _ in range(2)]
    for raw in conns:
        assert await raw.request(forged) == 200
    assert await (await Raw.open(port)).closed_by_server(timeout=1.0)
    for raw in conns:
        raw.close()


def test_ipv6_peers_count_by_their_slash_64():
    assert peer_key("2001:db8:1:2::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::ffff:192.0.2.7") == peer_key("192.0.2.7") == "192.0.2.7"


# -- out of file descriptors --------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _wait_for(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` (a process's log or its answer: nothing to await across processes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _answers(proc: CollabProcess) -> bool:
    try:
        proc.ping()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prlimit")
def test_out_of_descriptors_neither_spins_nor_floods_the_log_and_recovers(tmp_path):
    proc = CollabProcess(tmp_path).start()
    clients: list[socket.socket] = []
    try:
        open_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        # a few descriptors to spare, then none: accept() fails with EMFILE
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (open_fds + 5, hard))
        for _ in range(30):  # more than fit; the rest wait in the listen backlog
            clients.append(socket.create_connection(("127.0.0.1", proc.port), timeout=5))
        _wait_for(lambda: "Too many open files" in proc.log_file.read_text(errors="replace"),
                  WAIT, "the server never ran out of descriptors")

        cpu, size = _cpu_seconds(proc.pid), proc.log_file.stat().st_size
        time.sleep(2.0)  # the measuring window: what does an exhausted server do meanwhile?
        cpu, size = _cpu_seconds(proc.pid) - cpu, proc.log_file.stat().st_size - size
        assert cpu < 0.5, f"{cpu:.2f} s of CPU in 2 s: the accept loop spins"
        assert size < 1000, f"{size} bytes of log in 2 s"

        assert not _answers(proc)  # still out of descriptors: nothing can be accepted
        for client in clients:
            client.close()
        clients.clear()
        _wait_for(lambda: _answers(proc), WAIT, "/healthz did not answer once fds were free")
    finally:
        for client in clients:
            client.close()
        proc.stop()
    log = proc.log_file.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert log.count("cannot accept connections") == 1, log
    assert "accepting connections again" in log, log
