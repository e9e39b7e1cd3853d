"""``chat:*`` events against a real server with real Socket.IO clients (PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import re

import pytest
from harness import Client, make_settings, make_token, settled
from rawsocket import RawPolling

CHAT_KEYS = {"id", "title", "created_by", "created_at", "members"}
MESSAGE_KEYS = {"id", "chat_id", "seq", "user_id", "content", "created_at"}
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


# -- helpers -------------------------------------------------------------------


async def new_chat(owner: Client, chat_id: str = "c1", members: list[str] | None = None) -> dict:
    """Create a chat owned by ``owner``; returns the stored chat."""
    payload: dict = {"chat_id": chat_id}
    if members is not None:
        payload["members"] = members
    return (await owner.ok("chat:create", payload))["chat"]


async def joined(server, user_id: str, chat_id: str = "c1") -> Client:
    """A fresh connection of ``user_id`` that has joined ``chat_id``."""
    client = await server.connect(user_id)
    await client.ok("chat:join", {"chat_id": chat_id})
    return client


async def joined_owner(server, members: list[str] | None = None) -> Client:
    """alice, owner of chat c1 (with bob, unless told otherwise), joined to it."""
    alice = await server.connect("alice")
    await new_chat(alice, members=["bob"] if members is None else members)
    await alice.ok("chat:join", {"chat_id": "c1"})
    return alice


async def post(client: Client, chat_id: str, count: int) -> list[dict]:
    """Send ``count`` messages one after another; returns the stored messages."""
    acks = [
        await client.ok("chat:message", {"chat_id": chat_id, "content": f"m{i}"})
        for i in range(count)
    ]
    return [ack["message"] for ack in acks]


async def round_trip(client: Client) -> None:
    """An acked call: anything the server sent this client before it has arrived."""
    await client.ok("chat:create", {})


def seqs(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages]


# -- chat:create ---------------------------------------------------------------


async def test_create_generates_an_id(server):
    alice = await server.connect("alice")
    chat = (await alice.ok("chat:create", {"title": "lunch"}))["chat"]
    assert set(chat) == CHAT_KEYS
    assert ID_PATTERN.match(chat["id"])
    assert chat["title"] == "lunch"
    assert chat["created_by"] == "alice"
    assert chat["members"] == ["alice"]


async def test_create_generates_distinct_ids(server):
    alice = await server.connect("alice")
    first = (await alice.ok("chat:create", {}))["chat"]
    second = (await alice.ok("chat:create", {}))["chat"]
    assert first["id"] != second["id"]


async def test_create_with_given_id(server):
    alice = await server.connect("alice")
    chat = await new_chat(alice, "team:room-1.a_b")
    assert chat["id"] == "team:room-1.a_b"
    assert chat["title"] == ""


async def test_create_with_members_owner_first(server):
    alice = await server.connect("alice")
    chat = await new_chat(alice, members=["bob", "carol"])
    assert chat["members"] == ["alice", "bob", "carol"]


async def test_create_deduplicates_members_and_the_owner(server):
    alice = await server.connect("alice")
    chat = await new_chat(alice, members=["bob", "alice", "bob"])
    assert chat["members"] == ["alice", "bob"]


async def test_created_members_can_join(server):
    alice = await server.connect("alice")
    await new_chat(alice, members=["bob"])
    bob = await server.connect("bob")
    ack = await bob.ok("chat:join", {"chat_id": "c1"})
    assert ack["chat"]["members"] == ["alice", "bob"]


async def test_create_with_a_taken_id_is_already_exists(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await new_chat(alice)
    await bob.fails("chat:create", {"chat_id": "c1"}, "ALREADY_EXISTS")
    await alice.fails("chat:create", {"chat_id": "c1"}, "ALREADY_EXISTS")


@pytest.mark.parametrize("members", [[""], [42], [None], "bob", {"bob": True}, ["x" * 257]])
async def test_create_with_invalid_members_is_invalid_input(server, members):
    alice = await server.connect("alice")
    error = await alice.fails("chat:create", {"chat_id": "c1", "members": members},
                              "INVALID_INPUT")
    assert "members" in error["details"]
    # nothing was created
    await alice.ok("chat:create", {"chat_id": "c1"})


@pytest.mark.parametrize("chat_id", ["", "has space", "x" * 129, 7])
async def test_create_with_an_invalid_id_is_invalid_input(server, chat_id):
    alice = await server.connect("alice")
    error = await alice.fails("chat:create", {"chat_id": chat_id}, "INVALID_INPUT")
    assert "chat_id" in error["details"]


# -- chat:invite ---------------------------------------------------------------


async def test_owner_invites(server):
    alice = await server.connect("alice")
    await new_chat(alice)
    ack = await alice.ok("chat:invite", {"chat_id": "c1", "user_id": "bob"})
    assert set(ack["chat"]) == CHAT_KEYS
    assert ack["chat"]["members"] == ["alice", "bob"]
    bob = await server.connect("bob")
    await bob.ok("chat:join", {"chat_id": "c1"})


async def test_reinvite_is_idempotent(server):
    alice = await server.connect("alice")
    await new_chat(alice, members=["bob"])
    await alice.ok("chat:invite", {"chat_id": "c1", "user_id": "carol"})
    ack = await alice.ok("chat:invite", {"chat_id": "c1", "user_id": "bob"})
    assert ack["chat"]["members"] == ["alice", "bob", "carol"]
    ack = await alice.ok("chat:invite", {"chat_id": "c1", "user_id": "alice"})
    assert ack["chat"]["members"] == ["alice", "bob", "carol"]


async def test_member_cannot_invite(server):
    alice = await server.connect("alice")
    await new_chat(alice, members=["bob"])
    bob = await server.connect("bob")
    await bob.fails("chat:invite", {"chat_id": "c1", "user_id": "carol"}, "PERMISSION_DENIED")
    carol = await server.connect("carol")
    await carol.fails("chat:join", {"chat_id": "c1"}, "NOT_FOUND")


async def test_non_member_invite_looks_like_a_missing_chat(server):
    alice = await server.connect("alice")
    await new_chat(alice)
    carol = await server.connect("carol")
    hidden = await carol.fails("chat:invite", {"chat_id": "c1", "user_id": "carol"}, "NOT_FOUND")
    missing = await carol.fails("chat:invite", {"chat_id": "c2", "user_id": "carol"},
                                "NOT_FOUND")
    assert hidden.keys() == missing.keys()
    assert hidden["message"].replace("c1", "c2") == missing["message"]
    await carol.fails("chat:join", {"chat_id": "c1"}, "NOT_FOUND")


async def test_admin_passes_the_owner_check(server):
    alice = await server.connect("alice")
    await new_chat(alice)
    root = await server.connect("root", roles=["admin"])
    ack = await root.ok("chat:invite", {"chat_id": "c1", "user_id": "bob"})
    assert ack["chat"]["members"] == ["alice", "bob"]
    await root.ok("chat:join", {"chat_id": "c1"})
    await root.ok("chat:message", {"chat_id": "c1", "content": "from an admin"})
    await root.fails("chat:join", {"chat_id": "nope"}, "NOT_FOUND")


# -- chat:join -----------------------------------------------------------------


async def test_join_returns_chat_users_and_messages(server):
    alice = await joined_owner(server)
    await post(alice, "c1", 3)
    bob = await server.connect("bob")
    ack = await bob.ok("chat:join", {"chat_id": "c1"})
    assert set(ack) == {"ok", "chat", "users", "messages", "has_more"}
    assert ack["chat"]["id"] == "c1"
    assert ack["chat"]["members"] == ["alice", "bob"]
    assert sorted(ack["users"]) == ["alice", "bob"]
    assert seqs(ack["messages"]) == [1, 2, 3]
    assert [m["content"] for m in ack["messages"]] == ["m0", "m1", "m2"]
    assert ack["has_more"] is False
    assert all(set(m) == MESSAGE_KEYS for m in ack["messages"])


async def test_join_of_an_empty_chat(server):
    alice = await server.connect("alice")
    await new_chat(alice)
    ack = await alice.ok("chat:join", {"chat_id": "c1"})
    assert ack["users"] == ["alice"]
    assert ack["messages"] == []


async def test_non_member_join_is_not_found(server):
    await joined_owner(server)
    carol = await server.connect("carol")
    await carol.fails("chat:join", {"chat_id": "c1"}, "NOT_FOUND")
    await carol.fails("chat:join", {"chat_id": "nope"}, "NOT_FOUND")


async def test_non_member_join_does_not_enter_the_room(server):
    alice = await joined_owner(server)
    carol = await server.connect("carol")
    await carol.fails("chat:join", {"chat_id": "c1"}, "NOT_FOUND")
    await alice.ok("chat:message", {"chat_id": "c1", "content": "secret"})
    await round_trip(carol)
    assert carol.pending("chat:message") == []
    assert alice.pending("user:joined") == []


async def test_join_announces_to_others_not_the_sender(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    assert await alice.next("user:joined") == {"user_id": "bob", "chat_id": "c1"}
    assert bob.pending("user:joined") == []


async def test_second_tab_join_is_not_announced(server):
    alice = await joined_owner(server)
    await joined(server, "bob")
    assert await alice.next("user:joined") == {"user_id": "bob", "chat_id": "c1"}
    tab2 = await joined(server, "bob")
    await round_trip(alice)
    assert alice.pending("user:joined") == []
    ack = await tab2.ok("chat:join", {"chat_id": "c1"})  # joining again is harmless
    assert sorted(ack["users"]) == ["alice", "bob"]


# -- chat:message --------------------------------------------------------------


async def test_message_ack_carries_the_stored_message(server):
    alice = await joined_owner(server)
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "hello"})
    message = ack["message"]
    assert set(message) == MESSAGE_KEYS
    assert message["chat_id"] == "c1"
    assert message["seq"] == 1
    assert message["user_id"] == "alice"
    assert message["content"] == "hello"
    second = await alice.ok("chat:message", {"chat_id": "c1", "content": "again"})
    assert second["message"]["seq"] == 2
    assert second["message"]["id"] != message["id"]


async def test_message_is_broadcast_to_the_room_including_the_sender(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "hello"})
    assert alice.pending("chat:message") == [{"message": ack["message"]}]
    assert await bob.next("chat:message") == {"message": ack["message"]}


async def test_message_is_not_sent_outside_the_room(server):
    alice = await joined_owner(server)
    bob = await server.connect("bob")  # a member, but not joined
    await alice.ok("chat:message", {"chat_id": "c1", "content": "hello"})
    await round_trip(bob)
    assert bob.pending("chat:message") == []


async def test_message_with_empty_content_is_invalid_input(server):
    alice = await joined_owner(server)
    error = await alice.fails("chat:message", {"chat_id": "c1", "content": ""}, "INVALID_INPUT")
    assert "content" in error["details"]
    assert alice.pending("chat:message") == []


@pytest.mark.parametrize("content", [None, 5, ["hi"]])
async def test_message_content_must_be_a_string(server, content):
    alice = await joined_owner(server)
    error = await alice.fails("chat:message", {"chat_id": "c1", "content": content},
                              "INVALID_INPUT")
    assert "content" in error["details"]


async def test_message_at_the_size_limit_is_accepted(server):
    alice = await joined_owner(server)
    limit = server.app.settings.max_message_chars
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "é" * limit})
    assert len(ack["message"]["content"]) == limit


async def test_message_over_the_size_limit_is_payload_too_large(server):
    alice = await joined_owner(server)
    limit = server.app.settings.max_message_chars
    error = await alice.fails("chat:message", {"chat_id": "c1", "content": "x" * (limit + 1)},
                              "PAYLOAD_TOO_LARGE")
    assert error["details"] == {"limit": limit}
    assert alice.pending("chat:message") == []
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "fits"})
    assert ack["message"]["seq"] == 1  # nothing was stored


async def test_non_member_message_is_not_found(server):
    alice = await joined_owner(server)
    carol = await server.connect("carol")
    await carol.fails("chat:message", {"chat_id": "c1", "content": "hi"}, "NOT_FOUND")
    await carol.fails("chat:message", {"chat_id": "nope", "content": "hi"}, "NOT_FOUND")
    await round_trip(alice)
    assert alice.pending("chat:message") == []


async def test_member_may_post_without_joining(server):
    alice = await joined_owner(server)
    bob = await server.connect("bob")
    ack = await bob.ok("chat:message", {"chat_id": "c1", "content": "drive-by"})
    assert await alice.next("chat:message") == {"message": ack["message"]}


# -- client_id retries ---------------------------------------------------------


async def test_client_id_is_kept_on_the_message(server):
    alice = await joined_owner(server)
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "hi", "client_id": "k1"})
    assert ack["message"]["client_id"] == "k1"
    assert set(ack["message"]) == MESSAGE_KEYS | {"client_id"}


async def test_retry_with_the_same_client_id_returns_the_stored_message(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    payload = {"chat_id": "c1", "content": "hi", "client_id": "k1"}
    first = (await alice.ok("chat:message", payload))["message"]
    retry = (await alice.ok("chat:message", payload))["message"]
    assert retry == first
    # one broadcast only, to the sender and to the others
    assert alice.pending("chat:message") == [{"message": first}]
    assert await bob.next("chat:message") == {"message": first}
    await round_trip(bob)
    assert bob.pending("chat:message") == []


async def test_retry_does_not_advance_seq(server):
    alice = await joined_owner(server)
    payload = {"chat_id": "c1", "content": "hi", "client_id": "k1"}
    await alice.ok("chat:message", payload)
    await alice.ok("chat:message", payload)
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "next"})
    assert ack["message"]["seq"] == 2
    history = await alice.ok("chat:history", {"chat_id": "c1"})
    assert seqs(history["messages"]) == [1, 2]


async def test_retry_from_another_connection_of_the_same_user(server):
    alice = await joined_owner(server)
    tab2 = await server.connect("alice")
    payload = {"chat_id": "c1", "content": "hi", "client_id": "k1"}
    first = (await alice.ok("chat:message", payload))["message"]
    retry = (await tab2.ok("chat:message", payload))["message"]
    assert retry == first


async def test_retry_returns_the_stored_content_not_the_new_one(server):
    alice = await joined_owner(server)
    first = (await alice.ok("chat:message",
                            {"chat_id": "c1", "content": "hi", "client_id": "k1"}))["message"]
    retry = (await alice.ok("chat:message",
                            {"chat_id": "c1", "content": "edited", "client_id": "k1"}))["message"]
    assert retry == first
    assert retry["content"] == "hi"


async def test_same_client_id_from_another_user_is_a_new_message(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    payload = {"chat_id": "c1", "content": "hi", "client_id": "k1"}
    mine = (await alice.ok("chat:message", payload))["message"]
    theirs = (await bob.ok("chat:message", payload))["message"]
    assert theirs["id"] != mine["id"]
    assert (mine["seq"], theirs["seq"]) == (1, 2)
    assert theirs["user_id"] == "bob"
    assert await alice.next("chat:message") == {"message": mine}
    assert await alice.next("chat:message") == {"message": theirs}


async def test_same_client_id_in_another_chat_is_a_new_message(server):
    alice = await joined_owner(server)
    await new_chat(alice, "c2")
    payload = {"content": "hi", "client_id": "k1"}
    one = (await alice.ok("chat:message", {"chat_id": "c1", **payload}))["message"]
    two = (await alice.ok("chat:message", {"chat_id": "c2", **payload}))["message"]
    assert one["id"] != two["id"]
    assert (one["chat_id"], two["chat_id"]) == ("c1", "c2")


# -- concurrency ---------------------------------------------------------------


async def test_concurrent_messages_get_gapless_seqs_in_broadcast_order(server):
    users = [f"user{i}" for i in range(5)]
    owner = await server.connect("user0")
    await new_chat(owner, members=users)
    clients = await asyncio.gather(*(joined(server, u) for u in users * 2))

    async def send_five(client: Client) -> list[dict]:
        sends = [client.call("chat:message", {"chat_id": "c1", "content": f"{client.sid}/{i}"})
                 for i in range(5)]
        return await asyncio.gather(*sends)

    acks = [ack for batch in await asyncio.gather(*map(send_five, clients)) for ack in batch]
    assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]]
    assert sorted(ack["message"]["seq"] for ack in acks) == list(range(1, 51))

    for client in clients:
        received = [(await client.next("chat:message"))["message"] for _ in range(50)]
        assert seqs(received) == list(range(1, 51))
    history = await owner.ok("chat:history", {"chat_id": "c1"})
    assert seqs(history["messages"]) == list(range(1, 51))
    assert history["has_more"] is False


async def test_one_connections_messages_keep_their_order(server):
    alice = await joined_owner(server)
    acks = await asyncio.gather(
        *(alice.call("chat:message", {"chat_id": "c1", "content": str(i)}) for i in range(10))
    )
    stored = [ack["message"] for ack in acks]
    assert [m["content"] for m in sorted(stored, key=lambda m: m["seq"])] == [
        str(i) for i in range(10)
    ]


class HeldMessages:
    """The store's ``add_message`` with every call held until :meth:`release`, then
    run in the order the calls came: how many of them are in the store at once."""

    def __init__(self, store, monkeypatch) -> None:
        self.real = store.add_message
        self.calls: list[str] = []
        self._release = asyncio.Event()
        monkeypatch.setattr(store, "add_message", self._add)

    async def _add(self, chat_id, user_id, content, client_id=None):
        self.calls.append(content)
        await self._release.wait()  # (waiters wake in the order they came)
        return await self.real(chat_id, user_id, content, client_id)

    async def until_called(self, count: int) -> None:
        """Until ``count`` calls are held (nothing signals a call: this polls, bounded)."""
        deadline = asyncio.get_running_loop().time() + 5
        while len(self.calls) < count:
            assert asyncio.get_running_loop().time() < deadline, self.calls
            await asyncio.sleep(0.005)

    def release(self) -> None:
        self._release.set()


def sent_in_order(client: Client, events: list[tuple[str, dict]]) -> tuple[list, asyncio.Future]:
    """Emit ``events`` one after another without waiting: the acks as they arrive
    (``(index, ack)``), and a future done when every one has."""
    arrived: list[tuple[int, dict]] = []
    done = asyncio.get_running_loop().create_future()

    def answered(index: int):
        def callback(ack: dict) -> None:
            arrived.append((index, ack))
            if len(arrived) == len(events) and not done.done():
                done.set_result(None)
        return callback

    async def emit_all() -> None:
        for index, (event, data) in enumerate(events):
            await client.sio.emit(event, data, callback=answered(index))

    asyncio.ensure_future(emit_all())
    return arrived, done


async def test_a_connections_messages_are_in_the_store_together_up_to_the_depth(
        server, monkeypatch):
    """A poster does not wait for each commit: its next messages join the store's
    queue (max_pipelined_messages, 8 by default) while the first is written, in the
    order sent; the ones past the depth wait for the reader, unread."""
    depth = server.app.settings.max_pipelined_messages
    assert server.app.store.writes_in_call_order and depth == 8
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    held = HeldMessages(server.app.store, monkeypatch)
    count = depth + 4
    arrived, done = sent_in_order(alice, [
        ("chat:message", {"chat_id": "c1", "content": str(i)}) for i in range(count)])
    await held.until_called(depth)
    await asyncio.sleep(0.2)  # (the rest could come now if nothing held them back)
    assert held.calls == [str(i) for i in range(depth)]
    held.release()
    await asyncio.wait_for(done, 10)
    assert held.calls == [str(i) for i in range(count)]
    assert [index for index, _ in arrived] == list(range(count))  # acks in the order sent
    assert [ack["message"]["seq"] for _, ack in arrived] == list(range(1, count + 1))
    received = [(await bob.next("chat:message"))["message"] for _ in range(count)]
    assert [m["content"] for m in received] == [str(i) for i in range(count)]


async def test_a_failed_message_among_pipelined_ones_keeps_every_answer_in_order(server):
    """A message refused (over the size limit, in a chat that does not exist) answers
    in its place, with its ``error`` event after the acks before it, and the others
    are stored in the order sent; a chat:history sent last sees every one of them."""
    alice = await joined_owner(server)
    errors: list[tuple[int, str]] = []
    too_long = "x" * (server.app.settings.max_message_chars + 1)
    events = [("chat:message", {"chat_id": "c1", "content": "0"}),
              ("chat:message", {"chat_id": "c1", "content": too_long}),
              ("chat:message", {"chat_id": "c1", "content": "2"}),
              ("chat:message", {"chat_id": "nowhere", "content": "3"}),
              ("chat:message", {"chat_id": "c1", "content": "4"}),
              ("chat:history", {"chat_id": "c1"})]
    arrived: list[tuple[int, dict]]

    @alice.sio.on("error")
    async def on_error(error: dict) -> None:
        errors.append((len(arrived), error["code"]))

    arrived, done = sent_in_order(alice, events)
    await asyncio.wait_for(done, 10)
    assert [index for index, _ in arrived] == list(range(len(events)))
    acks = [ack for _, ack in arrived]
    assert [ack["ok"] for ack in acks] == [True, False, True, False, True, True]
    assert [acks[i]["error"]["code"] for i in (1, 3)] == ["PAYLOAD_TOO_LARGE", "NOT_FOUND"]
    assert errors == [(1, "PAYLOAD_TOO_LARGE"), (3, "NOT_FOUND")]  # each before its own ack
    assert [acks[i]["message"]["seq"] for i in (0, 2, 4)] == [1, 2, 3]
    assert [m["content"] for m in acks[5]["messages"]] == ["0", "2", "4"]


async def test_an_event_after_pipelined_messages_waits_for_them(server, monkeypatch):
    """Any other event of the connection is handled once its messages have been
    answered: a chat:leave sent right after them does not overtake their broadcasts."""
    alice = await joined_owner(server)
    held = HeldMessages(server.app.store, monkeypatch)
    arrived, done = sent_in_order(alice, [
        ("chat:message", {"chat_id": "c1", "content": "0"}),
        ("chat:message", {"chat_id": "c1", "content": "1"}),
        ("chat:leave", {"chat_id": "c1"})])
    await held.until_called(2)
    await asyncio.sleep(0.1)  # (the leave would be handled now if it did not wait)
    assert arrived == [] and "chat_c1" in server.app.sio.rooms(alice.sid)
    held.release()
    await asyncio.wait_for(done, 10)
    assert [index for index, _ in arrived] == [0, 1, 2]
    assert [(await alice.next("chat:message"))["message"]["content"] for _ in range(2)] == \
        ["0", "1"]  # (a member still when they were broadcast)


async def test_messages_in_the_store_when_their_sender_leaves_are_stored(server,
                                                                        monkeypatch):
    """Nothing of a connection that closed with messages in the store is left behind,
    and its messages are stored and broadcast all the same (unacknowledged: a client
    that sends them again with their client_id gets them back, not again)."""
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    held = HeldMessages(server.app.store, monkeypatch)
    sent_in_order(alice, [("chat:message", {"chat_id": "c1", "content": str(i)})
                          for i in range(3)])
    await held.until_called(3)
    await alice.disconnect()
    held.release()
    received = [(await bob.next("chat:message"))["message"]["content"] for _ in range(3)]
    assert received == ["0", "1", "2"]
    bobs = {"connections": 1, "users": 1, "registry": 1, "sio rooms": 3,
            "sio environ": 1, "eio sockets": 1}  # (and nothing of alice's)
    assert await settled(server.app, bobs) == bobs


async def test_messages_sent_with_a_disconnect_in_one_polling_post_are_stored(server):
    """A polling client sends what it queued in one POST: its messages, then its
    DISCONNECT, handled in one go. The DISCONNECT waits for the messages."""
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    polling = await RawPolling.connect(server.url, make_token("alice"))
    try:
        body = "\x1e".join(
            [f'42{i + 1}["chat:message",{{"chat_id":"c1","content":"{i}"}}]' for i in range(3)]
            + ["41"])  # (Engine.IO MESSAGE of a Socket.IO DISCONNECT)
        assert (await polling.post(body))[0] == 200
        received = [(await bob.next("chat:message"))["message"]["content"] for _ in range(3)]
    finally:
        await polling.close()
    assert received == ["0", "1", "2"]
    history = await alice.ok("chat:history", {"chat_id": "c1"})
    assert [m["content"] for m in history["messages"]] == ["0", "1", "2"]


async def test_a_shutdown_lets_messages_in_the_store_finish(tmp_path, monkeypatch):
    from harness import Harness

    from collab.server import Server

    settings = make_settings(storage_url=f"sqlite:///{tmp_path / 'c.db'}")
    first = Harness(await Server.start(settings))
    try:
        alice = await joined_owner(first)
        held = HeldMessages(first.app.store, monkeypatch)
        sent_in_order(alice, [("chat:message", {"chat_id": "c1", "content": str(i)})
                              for i in range(3)])
        await held.until_called(3)
        stopping = asyncio.ensure_future(first.server.stop())
        await alice.sio.wait()  # (the shutdown has disconnected everyone)
        assert not stopping.done()  # it waits for the messages
        held.release()
        await asyncio.wait_for(stopping, 10)
    finally:
        await first.close_clients()
    again = Harness(await Server.start(settings))
    try:
        alice = await again.connect("alice")
        history = await alice.ok("chat:history", {"chat_id": "c1"})
        assert [m["content"] for m in history["messages"]] == ["0", "1", "2"]
    finally:
        await again.close_clients()
        await again.server.stop()


@pytest.mark.parametrize("settings", [make_settings(max_pipelined_messages=1)])
async def test_a_depth_of_one_handles_messages_one_at_a_time(server, monkeypatch):
    alice = await joined_owner(server)
    held = HeldMessages(server.app.store, monkeypatch)
    arrived, done = sent_in_order(alice, [
        ("chat:message", {"chat_id": "c1", "content": str(i)}) for i in range(3)])
    await held.until_called(1)
    await asyncio.sleep(0.1)
    assert held.calls == ["0"]
    held.release()
    await asyncio.wait_for(done, 10)
    assert [ack["message"]["seq"] for _, ack in arrived] == [1, 2, 3]


# -- since_seq recovery --------------------------------------------------------


async def test_rejoin_with_since_seq_returns_exactly_the_missed_messages(server):
    alice = await joined_owner(server)
    await post(alice, "c1", 2)
    bob = await server.connect("bob")
    seen = (await bob.ok("chat:join", {"chat_id": "c1"}))["messages"]
    last_seen = seen[-1]["seq"]
    await bob.disconnect()
    missed = await post(alice, "c1", 5)

    bob = await server.connect("bob")
    ack = await bob.ok("chat:join", {"chat_id": "c1", "since_seq": last_seen})
    assert ack["messages"] == missed
    assert seqs(ack["messages"]) == [3, 4, 5, 6, 7]


async def test_since_seq_zero_returns_everything(server):
    alice = await joined_owner(server)
    posted = await post(alice, "c1", 3)
    ack = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": 0})
    assert ack["messages"] == posted


async def test_since_seq_at_or_beyond_the_last_is_empty(server):
    alice = await joined_owner(server)
    await post(alice, "c1", 3)
    for since in (3, 4, 1000):
        ack = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": since})
        assert ack["messages"] == []


@pytest.mark.parametrize("since_seq", [-1, "2", 1.5, True])
async def test_invalid_since_seq_is_invalid_input(server, since_seq):
    alice = await server.connect("alice")
    await new_chat(alice)
    error = await alice.fails("chat:join", {"chat_id": "c1", "since_seq": since_seq},
                              "INVALID_INPUT")
    assert "since_seq" in error["details"]


# -- chat:history ----------------------------------------------------------------


async def test_history_default_page_is_the_latest_50_oldest_first(server):
    alice = await joined_owner(server)
    await post(alice, "c1", 52)
    ack = await alice.ok("chat:history", {"chat_id": "c1"})
    assert set(ack) == {"ok", "messages", "has_more"}
    assert seqs(ack["messages"]) == list(range(3, 53))
    assert ack["has_more"] is True


async def test_non_member_history_is_not_found(server):
    alice = await joined_owner(server)
    await post(alice, "c1", 1)
    carol = await server.connect("carol")
    await carol.fails("chat:history", {"chat_id": "c1"}, "NOT_FOUND")
    await carol.fails("chat:history", {"chat_id": "nope"}, "NOT_FOUND")


class TestSmallHistoryPages:
    """history_limit=3 and history_max=5, so paging is cheap to exercise."""

    @pytest.fixture
    def settings(self):
        return make_settings(history_limit=3, history_max=5)

    async def test_default_page_uses_history_limit(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 5)
        ack = await alice.ok("chat:history", {"chat_id": "c1"})
        assert seqs(ack["messages"]) == [3, 4, 5]
        assert ack["has_more"] is True

    async def test_has_more_is_false_when_everything_fits(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 3)
        ack = await alice.ok("chat:history", {"chat_id": "c1"})
        assert seqs(ack["messages"]) == [1, 2, 3]
        assert ack["has_more"] is False

    async def test_empty_chat_history(self, server):
        alice = await joined_owner(server)
        ack = await alice.ok("chat:history", {"chat_id": "c1"})
        assert ack["messages"] == []
        assert ack["has_more"] is False

    async def test_before_seq_pages_backwards(self, server):
        alice = await joined_owner(server)
        posted = await post(alice, "c1", 5)
        ack = await alice.ok("chat:history", {"chat_id": "c1", "before_seq": 4, "limit": 2})
        assert ack["messages"] == posted[1:3]
        assert ack["has_more"] is True
        ack = await alice.ok("chat:history", {"chat_id": "c1", "before_seq": 2, "limit": 2})
        assert ack["messages"] == posted[:1]
        assert ack["has_more"] is False

    async def test_before_seq_beyond_the_last_is_the_latest_page(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 4)
        ack = await alice.ok("chat:history", {"chat_id": "c1", "before_seq": 100})
        assert seqs(ack["messages"]) == [2, 3, 4]
        assert ack["has_more"] is True

    async def test_limit_is_capped_at_history_max(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 7)
        ack = await alice.ok("chat:history", {"chat_id": "c1", "limit": 100})
        assert seqs(ack["messages"]) == [3, 4, 5, 6, 7]
        assert ack["has_more"] is True

    async def test_limit_below_the_cap_is_honoured(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 7)
        ack = await alice.ok("chat:history", {"chat_id": "c1", "limit": 4})
        assert seqs(ack["messages"]) == [4, 5, 6, 7]

    @pytest.mark.parametrize("field, value", [
        ("limit", 0), ("limit", -1), ("limit", "3"), ("before_seq", 0), ("before_seq", 2.5),
    ])
    async def test_invalid_paging_is_invalid_input(self, server, field, value):
        alice = await joined_owner(server)
        error = await alice.fails("chat:history", {"chat_id": "c1", field: value},
                                  "INVALID_INPUT")
        assert field in error["details"]

    async def test_join_returns_the_latest_page(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 5)
        ack = await alice.ok("chat:join", {"chat_id": "c1"})
        assert seqs(ack["messages"]) == [3, 4, 5]
        assert ack["has_more"] is True  # older ones: page back with chat:history

    async def test_join_since_seq_is_capped(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 7)
        ack = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": 0})
        assert seqs(ack["messages"]) == [1, 2, 3, 4, 5]  # the client pages on from seq 5
        assert ack["has_more"] is True  # newer ones
        ack = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": 5})
        assert seqs(ack["messages"]) == [6, 7]
        assert ack["has_more"] is False

    async def test_join_since_seq_with_exactly_a_full_page_has_no_more(self, server):
        alice = await joined_owner(server)
        await post(alice, "c1", 5)
        ack = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": 0})
        assert (seqs(ack["messages"]), ack["has_more"]) == ([1, 2, 3, 4, 5], False)


# -- chat:typing -----------------------------------------------------------------


async def test_typing_goes_to_others_not_the_sender(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    ack = await alice.ok("chat:typing", {"chat_id": "c1", "typing": True})
    assert set(ack) == {"ok"}
    assert alice.pending("chat:typing") == []
    assert await bob.next("chat:typing") == {"chat_id": "c1", "user_id": "alice", "typing": True}
    await alice.ok("chat:typing", {"chat_id": "c1", "typing": False})
    assert await bob.next("chat:typing") == {"chat_id": "c1", "user_id": "alice", "typing": False}


@pytest.mark.parametrize("typing", ["yes", 1, None, "true"])
async def test_typing_must_be_a_boolean(server, typing):
    alice = await joined_owner(server)
    error = await alice.fails("chat:typing", {"chat_id": "c1", "typing": typing},
                              "INVALID_INPUT")
    assert "typing" in error["details"]


async def test_non_member_typing_is_not_found(server):
    alice = await joined_owner(server)
    carol = await server.connect("carol")
    await carol.fails("chat:typing", {"chat_id": "c1", "typing": True}, "NOT_FOUND")
    await round_trip(alice)
    assert alice.pending("chat:typing") == []


# -- chat:leave ------------------------------------------------------------------


async def test_leave_announces_and_stops_broadcasts(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    ack = await bob.ok("chat:leave", {"chat_id": "c1"})
    assert set(ack) == {"ok"}
    assert await alice.next("user:left") == {"user_id": "bob", "chat_id": "c1"}
    await alice.ok("chat:message", {"chat_id": "c1", "content": "gone?"})
    await round_trip(bob)
    assert bob.pending("chat:message") == []


async def test_leave_with_another_tab_still_present_is_silent(server):
    alice = await joined_owner(server)
    tab1 = await joined(server, "bob")
    tab2 = await joined(server, "bob")
    await tab1.ok("chat:leave", {"chat_id": "c1"})
    await round_trip(alice)
    assert alice.pending("user:left") == []
    await tab2.ok("chat:leave", {"chat_id": "c1"})
    assert await alice.next("user:left") == {"user_id": "bob", "chat_id": "c1"}


async def test_leave_of_a_room_never_joined_is_a_no_op(server):
    alice = await joined_owner(server)
    bob = await server.connect("bob")
    await bob.ok("chat:leave", {"chat_id": "c1"})
    await round_trip(alice)
    assert alice.pending("user:left") == []


async def test_disconnect_announces_user_left(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    await bob.disconnect()
    assert await alice.next("user:left") == {"user_id": "bob", "chat_id": "c1"}


# -- malformed calls -------------------------------------------------------------


async def test_unknown_event_is_invalid_input(server):
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    await alice.fails("chat:shout", {"chat_id": "c1", "content": "hi"}, "INVALID_INPUT")
    await round_trip(bob)
    assert bob.pending("chat:message") == []
    assert bob.pending("error") == []


async def test_unknown_field_is_invalid_input_naming_it(server):
    alice = await joined_owner(server)
    error = await alice.fails("chat:message", {"chat_id": "c1", "content": "hi", "colour": "red"},
                              "INVALID_INPUT")
    assert list(error["details"]) == ["colour"]
    assert alice.pending("chat:message") == []


@pytest.mark.parametrize("event", ["chat:join", "chat:message", "chat:history", "chat:typing",
                                   "chat:leave", "chat:invite"])
async def test_missing_chat_id_is_invalid_input(server, event):
    alice = await server.connect("alice")
    error = await alice.fails(event, {}, "INVALID_INPUT")
    assert "chat_id" in error["details"]


@pytest.mark.parametrize("payload", [None, "c1", ["c1"], 5])
async def test_non_object_payload_is_invalid_input(server, payload):
    alice = await joined_owner(server)
    ack = await alice.sio.call("chat:message", payload, timeout=5)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "INVALID_INPUT"
    assert await alice.next("error") == ack["error"]


async def test_broadcasts_leave_in_seq_order_when_the_store_completes_out_of_order(
        server, monkeypatch):
    """MongoDB may finish two concurrent inserts in either order; clients still see 1, 2."""
    alice = await joined_owner(server)
    bob = await joined(server, "bob")
    store_add = server.app.store.add_message

    async def first_insert_is_slow(*args, **kwargs):
        message, created = await store_add(*args, **kwargs)
        if message["seq"] == 1:
            await asyncio.sleep(0.2)  # injected latency: the reply to seq 1 arrives late
        return message, created

    monkeypatch.setattr(server.app.store, "add_message", first_insert_is_slow)
    await asyncio.gather(
        alice.ok("chat:message", {"chat_id": "c1", "content": "one"}),
        bob.ok("chat:message", {"chat_id": "c1", "content": "two"}),
    )
    seen = [(await bob.next("chat:message"))["message"]["seq"] for _ in range(2)]
    assert seen == [1, 2]
