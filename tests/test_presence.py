"""Presence: who is in a document or chat room, and the ``user:joined`` / ``user:left`` events.

Every behaviour is checked for both kinds of room; they share the rules.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from harness import Client

RID = "room1"


@dataclasses.dataclass(frozen=True)
class Kind:
    """What differs between document rooms and chat rooms."""

    prefix: str  # event prefix: "documents" or "chat"
    key: str  # id field: "document_id" or "chat_id"

    async def create(self, owner: Client, *members: str, rid: str = RID) -> None:
        """Create the resource with ``owner`` and let ``members`` join it."""
        if self.prefix == "chat":
            await owner.ok("chat:create", {"chat_id": rid, "members": list(members)})
            return
        await owner.ok("documents:create", {"document_id": rid})
        for user_id in members:
            await owner.ok("documents:share",
                           {"document_id": rid, "user_id": user_id, "role": "viewer"})

    async def join(self, client: Client, rid: str = RID) -> dict:
        return await client.ok(f"{self.prefix}:join", {self.key: rid})

    async def leave(self, client: Client, rid: str = RID) -> dict:
        return await client.call(f"{self.prefix}:leave", {self.key: rid})

    def presence(self, user_id: str, rid: str = RID) -> dict:
        """The body of ``user:joined`` / ``user:left`` for this room."""
        return {"user_id": user_id, self.key: rid}


DOCUMENT = Kind("documents", "document_id")
CHAT = Kind("chat", "chat_id")


@pytest.fixture(params=[DOCUMENT, CHAT], ids=["document", "chat"])
def kind(request) -> Kind:
    return request.param


async def round_trip(client: Client) -> None:
    """An acked call: whatever the server sent this client before has now arrived."""
    await client.ok("documents:leave", {"document_id": "round-trip"})


async def disconnected(server, client: Client, timeout: float = 5.0) -> None:
    """Close ``client`` and wait until the server has handled it.

    Nothing is sent to anyone when a second tab closes, so there is no event
    to await; watch the server's connection table instead.
    """
    sid = client.sid
    await client.disconnect()
    deadline = asyncio.get_running_loop().time() + timeout
    while sid in server.app.connections:
        assert asyncio.get_running_loop().time() < deadline, "server never saw the disconnect"
        await asyncio.sleep(0.01)


async def test_join_ack_lists_the_distinct_present_users_sorted(server, kind):
    carol = await server.connect("carol")
    alice_tabs = [await server.connect("alice") for _ in range(2)]
    bob = await server.connect("bob")
    await kind.create(carol, "alice", "bob")
    assert (await kind.join(carol))["users"] == ["carol"]
    for tab in alice_tabs:
        assert (await kind.join(tab))["users"] == ["alice", "carol"]
    assert (await kind.join(bob))["users"] == ["alice", "bob", "carol"]


async def test_user_joined_reaches_others_but_not_the_sender(server, kind):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await kind.create(alice, "bob")
    await kind.join(alice)
    await kind.join(bob)
    assert await alice.next("user:joined") == kind.presence("bob")
    assert bob.pending("user:joined") == []


async def test_a_second_tab_does_not_announce_the_user_again(server, kind):
    alice = await server.connect("alice")
    bob_tabs = [await server.connect("bob") for _ in range(2)]
    await kind.create(alice, "bob")
    await kind.join(alice)
    await kind.join(bob_tabs[0])
    assert await alice.next("user:joined") == kind.presence("bob")
    await kind.join(bob_tabs[1])
    await round_trip(alice)
    assert alice.pending("user:joined") == []


async def test_rejoining_from_the_same_connection_does_not_announce_again(server, kind):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await kind.create(alice, "bob")
    await kind.join(alice)
    await kind.join(bob)
    assert await alice.next("user:joined") == kind.presence("bob")
    assert (await kind.join(bob))["users"] == ["alice", "bob"]
    await round_trip(alice)
    assert alice.pending("user:joined") == []


async def test_user_left_reaches_the_others_on_leave(server, kind):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await kind.create(alice, "bob")
    await kind.join(alice)
    await kind.join(bob)
    assert await kind.leave(bob) == {"ok": True}
    assert await alice.next("user:left") == kind.presence("bob")
    assert (await kind.join(alice))["users"] == ["alice"]


async def test_disconnect_without_leave_sends_user_left(server, kind):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await kind.create(alice, "bob")
    await kind.join(alice)
    await kind.join(bob)
    await bob.disconnect()
    assert await alice.next("user:left") == kind.presence("bob")


async def test_disconnect_sends_user_left_to_every_room_the_user_was_in(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await DOCUMENT.create(alice, "bob")
    await CHAT.create(alice, "bob")
    for kind in (DOCUMENT, CHAT):
        await kind.join(alice)
        await kind.join(bob)
    await bob.disconnect()
    received = [await alice.next("user:left") for _ in range(2)]
    assert sorted(received, key=str) == sorted([DOCUMENT.presence("bob"), CHAT.presence("bob")],
                                               key=str)


@pytest.mark.parametrize("close", ["leave", "disconnect"])
async def test_user_left_only_when_the_last_tab_closes(server, kind, close):
    alice = await server.connect("alice")
    bob_tabs = [await server.connect("bob") for _ in range(2)]
    await kind.create(alice, "bob")
    await kind.join(alice)
    for tab in bob_tabs:
        await kind.join(tab)

    async def close_tab(tab: Client) -> None:
        if close == "leave":
            assert await kind.leave(tab) == {"ok": True}
        else:
            await disconnected(server, tab)

    await close_tab(bob_tabs[0])
    await round_trip(alice)
    assert alice.pending("user:left") == []
    assert (await kind.join(alice))["users"] == ["alice", "bob"]

    await close_tab(bob_tabs[1])
    assert await alice.next("user:left") == kind.presence("bob")
    assert (await kind.join(alice))["users"] == ["alice"]


@pytest.mark.parametrize("rid", [RID, "never-created"], ids=["existing", "missing"])
async def test_leaving_a_room_never_joined_acks_and_broadcasts_nothing(server, kind, rid):
    alice = await server.connect("alice")
    bob_tabs = [await server.connect("bob") for _ in range(2)]
    await kind.create(alice, "bob")
    await kind.join(alice)
    await kind.join(bob_tabs[0])
    assert await alice.next("user:joined") == kind.presence("bob")
    # the other tab of a present user, and a user who never joined at all
    assert await kind.leave(bob_tabs[1], rid) == {"ok": True}
    stranger = await server.connect("mallory")
    assert await kind.leave(stranger, rid) == {"ok": True}
    await round_trip(alice)
    assert alice.pending("user:left") == []
    assert (await kind.join(alice))["users"] == ["alice", "bob"]


async def test_websocket_and_polling_clients_share_a_room(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob", transports=["polling"])
    assert bob.sio.transport() == "polling"
    await DOCUMENT.create(alice)
    await alice.ok("documents:share", {"document_id": RID, "user_id": "bob", "role": "editor"})
    await DOCUMENT.join(alice)
    assert (await DOCUMENT.join(bob))["users"] == ["alice", "bob"]
    assert await alice.next("user:joined") == DOCUMENT.presence("bob")

    by_bob = await bob.ok("documents:update", {"document_id": RID, "content": "b", "version": 1})
    assert await alice.next("documents:updated") == {"document": by_bob["document"],
                                                     "user_id": "bob"}
    by_alice = await alice.ok("documents:update",
                              {"document_id": RID, "content": "a", "version": 2})
    assert await bob.next("documents:updated") == {"document": by_alice["document"],
                                                   "user_id": "alice"}

    await alice.disconnect()
    assert await bob.next("user:left") == DOCUMENT.presence("alice")


async def test_a_join_that_fails_after_entering_leaves_no_trace(server, kind, monkeypatch):
    """The room is entered before the resource is read; if the read fails, nothing stays."""
    from collab.errors import Unavailable

    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await kind.create(alice, "bob")
    await kind.join(alice)

    async def store_gone(*args, **kwargs):
        raise Unavailable()

    getter = "get_chat" if kind is CHAT else "get_document"
    monkeypatch.setattr(server.app.store, getter, store_gone)
    monkeypatch.setattr(server.app.store, "get_document_role",
                        lambda *a: asyncio.sleep(0, "viewer"))
    monkeypatch.setattr(server.app.store, "get_chat_role", lambda *a: asyncio.sleep(0, "member"))
    await bob.fails(f"{kind.prefix}:join", {kind.key: RID}, "UNAVAILABLE")
    monkeypatch.undo()

    await round_trip(alice)
    assert alice.pending("user:joined") == []
    assert (await kind.join(alice))["users"] == ["alice"]
    assert alice.pending("user:left") == []
