"""The JavaScript provider (clients/js, @collab/client) against a real server.

clients/js/test/*.test.js run under ``node --test`` with real yjs, y-protocols and
socket.io-client; ``tsc --noEmit`` proves its declarations (src/index.d.ts) and a
typed usage example compile. Both need node and ``npm ci --prefix clients/js``;
without them these tests fail in CI (CI=true) and are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import os

from harness import CLIENT_JS_DIR, Harness, make_settings, make_token, node_or_skip

from collab.server import Server

#: the users the node tests connect as (clients/js/test/helpers.js), and "root", an admin
USERS = ("alice", "bob", "carol", "dave")


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run a command in clients/js on this loop (which keeps serving the in-process
    server meanwhile); return its output, failing the test on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=CLIENT_JS_DIR, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
    output = stdout.decode()
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{output}"
    return output


async def test_provider_against_the_server(server):
    node = node_or_skip("socket.io-client", CLIENT_JS_DIR)
    # a second server whose rate limit the retry test can reach in a few events
    limited = await Server.start(make_settings(rate_limit_per_second=2, rate_limit_burst=3))
    try:
        env = {
            **os.environ,
            "COLLAB_URL": server.url,
            "COLLAB_URL_LIMITED": Harness(limited).url,
            **{f"COLLAB_TOKEN_{user.upper()}": make_token(user) for user in USERS},
            "COLLAB_TOKEN_ROOT": make_token("root", roles=["admin"]),
        }
        files = sorted((CLIENT_JS_DIR / "test").glob("*.test.js"))
        output = await run(node, "--test", "--test-reporter=tap", *map(str, files), env=env)
    finally:
        await limited.stop()
    # the TAP summary: every test declared ran and passed, none skipped or left to do
    declared = sum(path.read_text().count("\ntest(") for path in files)
    summary = dict(line[2:].split(" ", 1) for line in output.splitlines()
                   if line.startswith("# ") and line[2:].split(" ", 1)[0] in
                   ("tests", "pass", "fail", "skipped", "todo", "cancelled"))
    assert declared > 0 and summary["tests"] == summary["pass"] == str(declared), output
    assert summary["fail"] == summary["skipped"] == summary["todo"] == summary["cancelled"] == "0"


async def test_declarations_type_check():
    node = node_or_skip("typescript", CLIENT_JS_DIR)
    await run(node, str(CLIENT_JS_DIR / "node_modules" / "typescript" / "bin" / "tsc"),
              "--noEmit", "-p", str(CLIENT_JS_DIR))
