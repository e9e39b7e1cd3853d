"""Browser interop: the official socket.io-client v4 (Node) against a real server.

tests/js/interop.mjs does the talking and prints a JSON summary. It needs node and
``npm ci --prefix tests/js``; without them this test fails in CI (CI=true) and is
skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os

from harness import JS_DIR, make_token, node_or_skip

SCRIPT = JS_DIR / "interop.mjs"

EXPECTED_CHECKS = [
    "connect_error carries {code: UNAUTHORIZED} for a bad token",
    "connect_error carries {code: UNAUTHORIZED} without a token",
    "connect with auth: {token}",
    "documents:create answers {ok, document} by emitWithAck",
    "documents:share and documents:join announce user:joined",
    "documents:update is acked and broadcast to the others as documents:updated",
    "a stale documents:update fails with VERSION_CONFLICT and an error event",
    "chat:create and chat:join",
    "chat:message is broadcast to the whole room, sender included",
    "a repeated client_id returns the stored message and is not broadcast again",
    "chat:history and chat:join with since_seq",
    "chat:typing reaches the others",
    "invalid payloads and unknown events fail with INVALID_INPUT and an error event",
    "a chat the user is not in is refused",
    "user:left when the other user disconnects",
    "HTTP long-polling works too",
]


async def test_socket_io_client_v4_interop(server):
    node = node_or_skip("socket.io-client")
    env = {
        **os.environ,
        "COLLAB_URL": server.url,
        "COLLAB_TOKEN_ALICE": make_token("alice"),
        "COLLAB_TOKEN_BOB": make_token("bob"),
        "COLLAB_TOKEN_BAD": make_token("alice", key="not-the-server-secret-0123456789abcdef"),
    }
    # a subprocess awaited on this loop, which keeps serving the in-process server meanwhile
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), env=env, cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    output = stdout.decode().strip()
    assert output, f"no output from node (exit {proc.returncode}):\n{stderr.decode()}"
    summary = json.loads(output.splitlines()[-1])
    assert summary["failed"] == [], json.dumps(summary["failed"], indent=2)
    assert summary["passed"] == EXPECTED_CHECKS
    assert summary["ok"] is True and proc.returncode == 0, stderr.decode()
