"""The Socket.IO Admin UI (collab/admin.py), against ``collab serve`` processes.

python-socketio's instrumentation patches Engine.IO's socket class for the whole
process, so these tests run the server as a child rather than in the test process.
"""

from __future__ import annotations

import asyncio

import pytest
import socketio
from harness import WAIT, Client
from process import CollabProcess


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    proc = CollabProcess(tmp_path_factory.mktemp("admin"), {"COLLAB_ADMIN_UI": "true"})
    proc.start()
    yield proc
    proc.kill()


class AdminUI:
    """What the Admin UI does: connect to /admin with {username, password}, listen."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, asyncio.Queue] = {
            name: asyncio.Queue() for name in ("config", "server_stats")}
        for name, queue in self.events.items():
            self.sio.on(name, queue.put_nowait, namespace="/admin")

    async def sign_in(self, url: str, password: str | None) -> None:
        auth = None if password is None else {"username": "whoever", "password": password}
        await self.sio.connect(url, namespaces=["/admin"], auth=auth,
                               transports=["websocket"], wait_timeout=WAIT)

    async def next(self, event: str) -> dict:
        return await asyncio.wait_for(self.events[event].get(), WAIT)


async def test_an_admin_token_signs_in_and_sees_the_servers_counters(admin_server):
    ui = AdminUI()
    await ui.sign_in(admin_server.url, admin_server.token("root", "--role", "admin"))
    try:
        config = await ui.next("config")
        # read-only by default: none of the UI's actions
        assert config == {"supportedFeatures": ["AGGREGATED_EVENTS"]}
        # a user at work meanwhile, counted in the stats
        user = socketio.AsyncClient(reconnection=False)
        await user.connect(admin_server.url, auth={"token": admin_server.token("alice")},
                           transports=["websocket"], wait_timeout=WAIT)
        alice = Client(user)
        await alice.ok("chat:create", {"chat_id": "c", "title": "t"})
        await alice.ok("chat:message", {"chat_id": "c", "content": "hi"})
        for _ in range(5):  # a report every 2 s; the first may predate alice
            stats = await ui.next("server_stats")
            if stats["clientsCount"] >= 2:
                break
        assert stats["clientsCount"] >= 2
        assert {"name": "/", "socketsCount": 1} in stats["namespaces"]
        await alice.disconnect()
    finally:
        await ui.sio.disconnect()


async def test_the_admin_ui_is_disconnected_when_its_token_expires(admin_server):
    ui = AdminUI()
    gone = asyncio.Event()
    ui.sio.on("disconnect", lambda *_: gone.set(), namespace="/admin")
    await ui.sign_in(admin_server.url, admin_server.token("root", "--role", "admin",
                                                          "--ttl", "2"))
    await ui.next("config")  # signed in
    await asyncio.wait_for(gone.wait(), WAIT)  # (leeway 0: at the token's exp)
    assert not ui.sio.connected


@pytest.mark.parametrize("password", [None, "not a token", "user"])
async def test_anything_but_an_admin_token_is_refused(admin_server, password):
    if password == "user":
        password = admin_server.token("alice")  # valid, but not an admin's
    ui = AdminUI()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await ui.sign_in(admin_server.url, password)
    if password:  # the credential tried never reaches the log
        assert password not in admin_server.output()


async def test_the_admin_ui_can_be_given_its_actions(tmp_path):
    proc = CollabProcess(tmp_path, {"COLLAB_ADMIN_UI": "true",
                                    "COLLAB_ADMIN_UI_READ_ONLY": "false"})
    proc.start()
    try:
        ui = AdminUI()
        await ui.sign_in(proc.url, proc.token("root", "--role", "admin"))
        features = (await ui.next("config"))["supportedFeatures"]
        assert {"EMIT", "JOIN", "LEAVE", "DISCONNECT"} <= set(features)
        user = socketio.AsyncClient(reconnection=False)
        gone = asyncio.Event()
        user.on("disconnect", lambda *_: gone.set())
        await user.connect(proc.url, auth={"token": proc.token("alice")},
                           transports=["websocket"], wait_timeout=WAIT)
        # the UI's "disconnect" button on alice's socket
        await ui.sio.emit("_disconnect", ("/", False, user.get_sid()), namespace="/admin")
        await asyncio.wait_for(gone.wait(), WAIT)
        await ui.sio.disconnect()
    finally:
        proc.kill()


async def test_the_admin_ui_is_off_by_default(tmp_path):
    proc = CollabProcess(tmp_path)
    proc.start()
    try:
        ui = AdminUI()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await ui.sign_in(proc.url, proc.token("root", "--role", "admin"))
    finally:
        proc.kill()
