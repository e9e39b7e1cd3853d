"""What ``collab serve`` writes on stderr: UTC timestamps, text or JSON lines, each line once,
readiness changes once each."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from process import CollabProcess, collab
from services import MongoServer, with_database

UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(r"(?P<time>\S+) (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)")
#: a POSIX zone 5 h 30 min off UTC, with no tz database needed: local time would show
LOCAL_TZ = "XYZ-05:30"


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_node(tmp_path, **env: str) -> list[str]:
    """Start ``collab serve``, send it one request python-engineio refuses (an unknown
    transport), stop it; return its output lines."""
    node = CollabProcess(tmp_path, {"TZ": LOCAL_TZ, **env})
    node.start()
    try:
        assert fetch_status(node.url + "/socket.io/?EIO=4&transport=bogus") == 400
        assert node.terminate() == 0
    finally:
        node.kill()
    return node.output().splitlines()


def assert_recent_utc(stamp: str) -> None:
    assert UTC_ISO.fullmatch(stamp), stamp
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - when) < timedelta(minutes=5), stamp


def test_library_lines_come_once_and_formatted(tmp_path, server):
    # Given logger=False, python-engineio and python-socketio add a stderr handler of
    # their own, and each of their lines came out twice: raw, then formatted.
    assert server.app.sio.logger.handlers == []
    assert server.app.sio.eio.logger.handlers == []
    lines = run_node(tmp_path)
    # its "logged once" line for a client's bad request (with a session id where there
    # is one) is dropped: the 400 in the access log says it, once
    assert not [line for line in lines if "Invalid transport" in line], lines
    refused = [line for line in lines if "400 GET /socket.io/?EIO=4&transport=bogus" in line]
    assert len(refused) == 1 and " WARNING tornado.access: " in refused[0], lines


def test_text_lines_carry_utc_timestamps(tmp_path):
    lines = run_node(tmp_path)
    assert lines
    for line in lines:
        match = TEXT_LINE.fullmatch(line)
        assert match, line
        assert_recent_utc(match["time"])


def test_json_lines_parse(tmp_path):
    pytest.importorskip("pythonjsonlogger", reason="python-json-logger (a dependency) missing")
    lines = run_node(tmp_path, COLLAB_LOG_FORMAT="json")
    records = [json.loads(line) for line in lines]  # every line, none raw
    for record in records:
        assert list(record)[:4] == ["time", "level", "logger", "message"], record
        assert_recent_utc(record["time"])
    assert [r["level"] for r in records if r["message"].startswith("collab serving on")] \
        == ["INFO"]
    refused = [r for r in records if "transport=bogus" in r["message"]]
    assert [(r["level"], r["logger"]) for r in refused] == [("WARNING", "tornado.access")]
    assert records[-1]["message"] == "collab stopped"


def test_an_unknown_log_format_is_a_configuration_error(tmp_path):
    result = collab("serve", cwd=tmp_path, env={"COLLAB_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "collab: configuration error: COLLAB_LOG_FORMAT: 'xml': should be 'text' or 'json'"
    )


@pytest.mark.mongo
def test_readiness_is_logged_once_per_change_not_per_probe(tmp_path):
    with MongoServer(tmp_path) as mongo:
        node = CollabProcess(tmp_path, {
            "COLLAB_STORAGE_URL": with_database(mongo.url, "ready"),
            "COLLAB_MONGODB_SERVER_SELECTION_TIMEOUT_MS": "300",
        })
        node.start()
        try:
            readyz = node.url + "/readyz"
            assert fetch_status(readyz) == 200
            mongo.stop()
            assert [fetch_status(readyz) for _ in range(4)] == [503] * 4
            mongo.start()
            # a probe after the restart may still find the old connection refused
            assert 200 in (fetch_status(readyz) for _ in range(20))
            assert fetch_status(readyz) == 200
            mongo.stop()
            assert [fetch_status(readyz) for _ in range(3)] == [503] * 3
            assert node.terminate() == 0
        finally:
            node.kill()
    lines = node.output().splitlines()
    not_ready = [line for line in lines
                 if " WARNING collab: not ready: store mongodb://127.0.0.1:" in line]
    assert len(not_ready) == 2, lines
    assert sum(line.endswith(" INFO collab: ready again") for line in lines) == 1, lines
    assert not [line for line in lines if " ERROR " in line], lines


def test_no_credential_in_a_url_reaches_the_log(tmp_path):
    # the y-websocket provider sends its token in the URL; any client may put one there
    node = CollabProcess(tmp_path, {"COLLAB_LOG_LEVEL": "DEBUG"})
    node.start()
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2VjcmV0LXNpZ25hdHVyZQ"
    try:
        assert fetch_status(node.url + f"/yjs/doc?token={secret}") == 401
        assert fetch_status(node.url + f"/yjs/doc?x=1&password={secret}&Access_Token={secret}"
                            ) == 401
        assert fetch_status(node.url + f"/socket.io/?EIO=4&transport=bogus&token={secret}") \
            == 400
        assert node.terminate() == 0
    finally:
        node.kill()
    output = node.output()
    assert secret not in output and "c2VjcmV0LXNpZ25hdHVyZQ" not in output
    lines = output.splitlines()
    assert [line for line in lines if "401 GET /yjs/doc?token=*** " in line]
    assert [line for line in lines
            if "401 GET /yjs/doc?x=1&password=***&Access_Token=*** " in line]
    assert [line for line in lines if "/socket.io/?EIO=4&transport=bogus&token=*** " in line]


def test_a_token_in_a_malformed_header_does_not_reach_the_log(tmp_path):
    # Tornado refuses a header value with a control character and logs it whole, at INFO
    node = CollabProcess(tmp_path)
    node.start()
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.bWFsZm9ybWVkLWhlYWRlcg"
    try:
        for value in (f"Bearer {secret}\x7f", f"Bearer opaque-{secret[-12:]}\x01",
                      f"{secret}\x01"):
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
                sock.sendall(f"GET /yjs/doc HTTP/1.1\r\nHost: x\r\n"
                             f"Authorization: {value}\r\n\r\n".encode("latin-1"))
                assert sock.recv(100).startswith(b"HTTP/1.1 400")
        assert node.terminate() == 0
    finally:
        node.kill()
    output = node.output()
    assert "Malformed HTTP message" in output  # (the line that quoted the value)
    assert secret not in output and secret[-12:] not in output


def test_tornados_request_errors_are_masked_too(server, caplog):
    # Tornado's "Uncaught exception GET /path?query (ip)" line and its repr of the request
    # (the server fixture has set the masking up)
    import tornado.httputil
    from tornado.log import app_log, gen_log

    request = tornado.httputil.HTTPServerRequest(start_line=tornado.httputil.RequestStartLine(
        "GET", "/yjs/doc?token=SECRET-1&v=2", "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": "collab.example"}))
    try:
        raise RuntimeError("boom at /yjs/doc?token=SECRET-2")
    except RuntimeError:
        app_log.error("Uncaught exception %s\n%r", "GET /yjs/doc?token=SECRET-3 (::1)",
                      request, exc_info=True)
    gen_log.warning("%d %s: %s", 400, "GET /x?api_key=SECRET-4 (::1)", "bad")
    gen_log.warning("Invalid header value %r", "BEARER SECRET-5\x01")  # any case of the scheme
    assert "SECRET" not in caplog.text
    assert "token=***&v=2" in caplog.text and "api_key=***" in caplog.text
