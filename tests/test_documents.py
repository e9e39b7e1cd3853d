"""``documents:*`` events, end to end: a real server and real Socket.IO clients."""

from __future__ import annotations

import asyncio
import datetime
import re

import pytest
from harness import Client, make_settings

DOCUMENT_KEYS = {
    "id", "title", "content", "version", "created_by", "created_at", "updated_by", "updated_at",
}
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


async def create_doc(owner: Client, document_id: str = "doc", **fields: str) -> dict:
    """Create a document owned by ``owner``; returns the stored document."""
    ack = await owner.ok("documents:create", {"document_id": document_id, **fields})
    return ack["document"]


async def shared_doc(owner: Client, document_id: str = "doc", content: str = "",
                     **roles: str | None) -> dict:
    """Create a document and give each keyword's user that role (``bob="editor"``)."""
    document = await create_doc(owner, document_id, content=content)
    for user_id, role in roles.items():
        await owner.ok("documents:share",
                       {"document_id": document_id, "user_id": user_id, "role": role})
    return document


async def update(client: Client, version: int, content: str = "new",
                 document_id: str = "doc") -> dict:
    return await client.call("documents:update",
                             {"document_id": document_id, "content": content, "version": version})


async def stored(server, document_id: str = "doc") -> dict | None:
    """The document as the store holds it now."""
    return await server.app.raw_store.get_document(document_id)


async def round_trip(client: Client) -> None:
    """An acked call: whatever the server sent this client before has now arrived."""
    await client.ok("documents:leave", {"document_id": "round-trip"})


def parse_utc(timestamp: str) -> datetime.datetime:
    """Parse an ISO 8601 timestamp and insist it is UTC."""
    assert timestamp.endswith("Z") or timestamp.endswith("+00:00"), timestamp
    parsed = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == datetime.timedelta(0)
    return parsed


# -- documents:create -----------------------------------------------------------


async def test_create_without_an_id_generates_one(server):
    alice = await server.connect("alice")
    first = (await alice.ok("documents:create", {"title": "Notes"}))["document"]
    second = (await alice.ok("documents:create", {}))["document"]
    assert ID_RE.match(first["id"]) and ID_RE.match(second["id"])
    assert first["id"] != second["id"]
    assert (await stored(server, first["id"])) == first


async def test_create_with_an_id_stores_a_version_0_document(server):
    alice = await server.connect("alice")
    ack = await alice.ok("documents:create",
                         {"document_id": "doc", "title": "Plan", "content": "hello"})
    document = ack["document"]
    assert set(ack) == {"ok", "document"}
    assert set(document) == DOCUMENT_KEYS
    assert document["id"] == "doc"
    assert (document["title"], document["content"], document["version"]) == ("Plan", "hello", 0)
    assert document["updated_by"] == document["created_by"]
    assert document["updated_at"] == document["created_at"]
    assert (await stored(server)) == document


async def test_create_defaults_title_and_content_to_empty(server):
    alice = await server.connect("alice")
    document = await create_doc(alice)
    assert (document["title"], document["content"]) == ("", "")


async def test_created_by_comes_from_the_token_sub(server):
    user = await server.connect("user:42@example", name="Someone Else")
    document = await create_doc(user)
    assert document["created_by"] == document["updated_by"] == "user:42@example"


async def test_create_timestamps_are_iso_8601_utc(server):
    alice = await server.connect("alice")
    before = datetime.datetime.now(datetime.timezone.utc)
    document = await create_doc(alice)
    after = datetime.datetime.now(datetime.timezone.utc)
    created = parse_utc(document["created_at"])
    # stored with millisecond precision, so allow the truncation
    assert before - datetime.timedelta(milliseconds=1) <= created <= after


async def test_create_with_a_taken_id_is_already_exists(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    original = await create_doc(alice, content="mine")
    for client in (alice, bob):
        await client.fails("documents:create", {"document_id": "doc", "content": "x"},
                           "ALREADY_EXISTS")
    assert (await stored(server)) == original


@pytest.mark.parametrize("payload, field", [
    ({"document_id": ""}, "document_id"),
    ({"document_id": "x" * 129}, "document_id"),
    ({"document_id": "has space"}, "document_id"),
    ({"document_id": "a/b"}, "document_id"),
    ({"document_id": "caf\u00e9"}, "document_id"),
    ({"document_id": 42}, "document_id"),
    ({"document_id": None}, "document_id"),
    ({"title": 5}, "title"),
    ({"content": ["not", "a", "string"]}, "content"),
    ({"owner": "mallory"}, "owner"),
])
async def test_create_with_an_invalid_field_is_invalid_input(server, payload, field):
    alice = await server.connect("alice")
    error = await alice.fails("documents:create", payload, "INVALID_INPUT")
    assert set(error["details"]) == {field}
    assert all(isinstance(m, str) for m in error["details"][field]), error


async def test_create_accepts_the_longest_allowed_id(server):
    alice = await server.connect("alice")
    document_id = "A-z_0.9:" * 16
    assert len(document_id) == 128
    assert (await create_doc(alice, document_id))["id"] == document_id


@pytest.mark.parametrize("payload", [["doc"], "doc", 42, True])
async def test_create_with_a_non_object_payload_is_invalid_input(server, payload):
    alice = await server.connect("alice")
    error = await alice.fails("documents:create", payload, "INVALID_INPUT")
    assert error["details"]


# -- documents:share ------------------------------------------------------------


@pytest.mark.parametrize("role", ["editor", "viewer"])
async def test_owner_shares_a_role(server, role):
    alice = await server.connect("alice")
    await create_doc(alice)
    ack = await alice.call("documents:share", {"document_id": "doc", "user_id": "bob",
                                               "role": role})
    assert ack == {"ok": True, "document_id": "doc", "acl": {"alice": "owner", "bob": role}}


async def test_owner_changes_a_role(server):
    alice = await server.connect("alice")
    await shared_doc(alice, bob="editor", carol="viewer")
    ack = await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob",
                                             "role": "viewer"})
    assert ack["acl"] == {"alice": "owner", "bob": "viewer", "carol": "viewer"}


async def test_owner_revokes_with_null(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await shared_doc(alice, bob="editor", carol="viewer")
    ack = await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob",
                                             "role": None})
    assert ack["acl"] == {"alice": "owner", "carol": "viewer"}
    await bob.fails("documents:join", {"document_id": "doc"}, "NOT_FOUND")


@pytest.mark.parametrize("role", ["editor", "viewer"])
async def test_non_owner_member_cannot_share(server, role):
    alice = await server.connect("alice")
    member = await server.connect("bob")
    await shared_doc(alice, bob=role)
    await member.fails("documents:share",
                       {"document_id": "doc", "user_id": "carol", "role": "viewer"},
                       "PERMISSION_DENIED")
    await member.fails("documents:share",
                       {"document_id": "doc", "user_id": "bob", "role": "editor"},
                       "PERMISSION_DENIED")


async def test_share_by_a_stranger_looks_like_a_missing_document(server):
    alice = await server.connect("alice")
    mallory = await server.connect("mallory")
    await create_doc(alice)
    existing = await mallory.fails(
        "documents:share", {"document_id": "doc", "user_id": "mallory", "role": "editor"},
        "NOT_FOUND")
    missing = await mallory.fails(
        "documents:share", {"document_id": "nope", "user_id": "mallory", "role": "editor"},
        "NOT_FOUND")
    assert existing["message"].replace("doc", "ID") == missing["message"].replace("nope", "ID")
    assert "details" not in existing and "details" not in missing


@pytest.mark.parametrize("role", ["editor", "viewer", None])
async def test_the_owners_role_cannot_be_changed(server, role):
    alice = await server.connect("alice")
    await create_doc(alice)
    error = await alice.fails("documents:share",
                              {"document_id": "doc", "user_id": "alice", "role": role},
                              "INVALID_INPUT")
    assert "user_id" in error["details"]
    ack = await alice.ok("documents:share",
                         {"document_id": "doc", "user_id": "bob", "role": "viewer"})
    assert ack["acl"] == {"alice": "owner", "bob": "viewer"}


@pytest.mark.parametrize("payload, field", [
    ({"document_id": "doc", "user_id": "bob", "role": "owner"}, "role"),
    ({"document_id": "doc", "user_id": "bob", "role": "admin"}, "role"),
    ({"document_id": "doc", "user_id": "bob", "role": ""}, "role"),
    ({"document_id": "doc", "user_id": "bob", "role": 1}, "role"),
    ({"document_id": "doc", "user_id": "bob"}, "role"),
    ({"document_id": "doc", "user_id": "", "role": "viewer"}, "user_id"),
    ({"document_id": "doc", "role": "viewer"}, "user_id"),
])
async def test_share_with_an_invalid_field_is_invalid_input(server, payload, field):
    alice = await server.connect("alice")
    await create_doc(alice)
    error = await alice.fails("documents:share", payload, "INVALID_INPUT")
    assert set(error["details"]) == {field}


# -- revocation -----------------------------------------------------------------


def revoked_error(document_id: str = "doc") -> dict:
    """What a connection is sent when its user's access to the document is revoked."""
    return {"code": "PERMISSION_DENIED",
            "message": f"Access to document {document_id!r} was revoked",
            "details": {"document_id": document_id}}


async def test_revoking_takes_every_connection_of_the_user_out_of_the_room(server):
    alice, carol = await server.connect("alice"), await server.connect("carol")
    bob_tabs = [await server.connect("bob") for _ in range(2)]
    bob_elsewhere = await server.connect("bob")  # connected, never joined the document
    await shared_doc(alice, bob="viewer", carol="editor")
    for client in (alice, carol, *bob_tabs):
        await client.ok("documents:join", {"document_id": "doc"})

    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": None})
    for tab in bob_tabs:
        assert await tab.next("error") == revoked_error()
    assert await alice.next("user:left") == {"user_id": "bob", "document_id": "doc"}
    assert await carol.next("user:left") == {"user_id": "bob", "document_id": "doc"}

    by_carol = (await update(carol, 1, "after the revocation"))["document"]
    assert await alice.next("documents:updated") == {"document": by_carol, "user_id": "carol"}
    for client in (*bob_tabs, bob_elsewhere):
        await round_trip(client)
        assert client.pending("documents:updated") == []
    assert bob_elsewhere.pending("error") == []
    assert alice.pending("user:left") == carol.pending("user:left") == []  # once
    assert (await alice.ok("documents:join", {"document_id": "doc"}))["users"] == \
        ["alice", "carol"]


async def test_a_downgrade_or_an_admin_token_is_not_a_revocation(server):
    alice, carol = await server.connect("alice"), await server.connect("carol")
    bob = await server.connect("bob")
    bob_admin = await server.connect("bob", roles=["admin"])
    await shared_doc(alice, bob="editor", carol="editor")
    for client in (alice, carol, bob, bob_admin):
        await client.ok("documents:join", {"document_id": "doc"})
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": "viewer"})
    first = (await update(carol, 1))["document"]
    assert await bob.next("documents:updated") == {"document": first, "user_id": "carol"}

    # the admin tab keeps its access whatever the stored role; the other tab loses it
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": None})
    assert await bob.next("error") == revoked_error()
    second = (await update(carol, 2))["document"]
    assert [(await bob_admin.next("documents:updated"))["document"] for _ in range(2)] == \
        [first, second]
    await round_trip(bob)
    assert bob.pending("documents:updated") == []
    assert bob_admin.pending("error") == []
    assert (await alice.ok("documents:join", {"document_id": "doc"}))["users"] == \
        ["alice", "bob", "carol"]


@pytest.mark.parametrize("lands", ["after-the-role-check", "while-reading-the-users"])
async def test_a_join_in_flight_when_the_role_is_revoked_leaves_nothing_in_the_room(
        server, monkeypatch, lands):
    alice, bob, carol = [await server.connect(u) for u in ("alice", "bob", "carol")]
    await shared_doc(alice, bob="viewer", carol="editor")
    await carol.ok("documents:join", {"document_id": "doc"})
    paused, revoked = asyncio.Event(), asyncio.Event()

    async def pause_once() -> None:
        if not paused.is_set():
            paused.set()
            await revoked.wait()  # the whole revocation runs meanwhile

    if lands == "after-the-role-check":  # bob's join read the role (viewer) before it changed
        read_role = server.app.store.get_document_role

        async def role_then_pause(document_id: str, user_id: str) -> str | None:
            role = await read_role(document_id, user_id)
            if user_id == "bob":
                await pause_once()
            return role

        monkeypatch.setattr(server.app.store, "get_document_role", role_then_pause)
    else:  # ... and is in the room already, about to answer
        read_users = server.app.registry.room_users

        async def pause_then_users(room: str) -> list[str]:
            await pause_once()
            return await read_users(room)

        monkeypatch.setattr(server.app.registry, "room_users", pause_then_users)

    join = asyncio.ensure_future(bob.call("documents:join", {"document_id": "doc"}))
    await paused.wait()
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": None})
    revoked.set()
    ack = await join
    assert ack["ok"] is False, ack
    assert ack["error"]["code"] in ("NOT_FOUND", "PERMISSION_DENIED")
    monkeypatch.undo()

    assert (await update(carol, 1))["ok"] is True
    await round_trip(bob)
    assert bob.pending("documents:updated") == []
    assert carol.pending("user:joined") == []  # bob was never announced
    assert (await alice.ok("documents:join", {"document_id": "doc"}))["users"] == \
        ["alice", "carol"]


# -- documents:join -------------------------------------------------------------


async def test_viewer_joins_and_gets_the_document_and_users(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    document = await shared_doc(alice, content="text", bob="viewer")
    ack = await bob.call("documents:join", {"document_id": "doc"})
    assert ack == {"ok": True, "document": document, "role": "viewer", "users": ["bob"]}


@pytest.mark.parametrize("document_id", ["doc", "nope"], ids=["existing", "missing"])
async def test_join_by_a_non_member_is_not_found(server, document_id):
    alice = await server.connect("alice")
    mallory = await server.connect("mallory")
    await create_doc(alice)
    await mallory.fails("documents:join", {"document_id": document_id}, "NOT_FOUND")


async def test_admin_joins_any_document(server):
    alice = await server.connect("alice")
    admin = await server.connect("root", roles=["admin"])
    document = await create_doc(alice)
    ack = await admin.ok("documents:join", {"document_id": "doc"})
    assert (ack["document"], ack["users"]) == (document, ["root"])


async def test_admin_joining_a_missing_document_is_not_found(server):
    admin = await server.connect("root", roles=["admin"])
    await admin.fails("documents:join", {"document_id": "nope"}, "NOT_FOUND")


# -- documents:update -----------------------------------------------------------


async def test_editor_update_bumps_the_version_and_acks_the_stored_document(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    created = await shared_doc(alice, content="old", bob="editor")
    ack = await update(bob, version=1, content="new")
    document = ack["document"]
    assert set(ack) == {"ok", "document"}
    assert document["version"] == 1
    assert (document["content"], document["updated_by"]) == ("new", "bob")
    assert (document["created_by"], document["created_at"]) == ("alice", created["created_at"])
    assert parse_utc(document["updated_at"]) >= parse_utc(created["created_at"])
    assert (await stored(server)) == document
    assert (await update(alice, version=2))["document"]["version"] == 2


async def test_update_broadcasts_to_the_room_but_not_the_sender(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    carol = await server.connect("carol")
    await shared_doc(alice, bob="editor", carol="viewer")
    for client in (alice, bob, carol):
        await client.ok("documents:join", {"document_id": "doc"})
    document = (await update(bob, version=1))["document"]
    for other in (alice, carol):
        assert await other.next("documents:updated") == {"document": document, "user_id": "bob"}
    assert bob.pending("documents:updated") == []


async def test_update_from_an_editor_outside_the_room_reaches_the_room(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await shared_doc(alice, bob="editor")
    await alice.ok("documents:join", {"document_id": "doc"})
    document = (await update(bob, version=1))["document"]
    assert await alice.next("documents:updated") == {"document": document, "user_id": "bob"}
    assert bob.pending("documents:updated") == []


@pytest.mark.parametrize("role, code", [("viewer", "PERMISSION_DENIED"), (None, "NOT_FOUND")],
                         ids=["viewer", "stranger"])
async def test_update_without_the_editor_role_is_refused(server, role, code):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    original = await shared_doc(alice, **({"bob": role} if role else {}))
    await alice.ok("documents:join", {"document_id": "doc"})
    await bob.fails("documents:update", {"document_id": "doc", "content": "x", "version": 1},
                    code)
    assert (await stored(server)) == original
    await round_trip(alice)
    assert alice.pending("documents:updated") == []


@pytest.mark.parametrize("version", [1, 3], ids=["stale", "ahead"])
async def test_update_with_a_wrong_version_is_a_conflict(server, version):
    alice = await server.connect("alice")
    await create_doc(alice)
    current = (await update(alice, version=1, content="v1"))["document"]
    error = await alice.fails("documents:update",
                              {"document_id": "doc", "content": "x", "version": version},
                              "VERSION_CONFLICT")
    assert error["details"] == {"current_version": 1, "document": current}
    assert (await stored(server)) == current


async def test_concurrent_updates_of_the_same_version_exactly_one_wins(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await shared_doc(alice, bob="editor")
    acks = await asyncio.gather(update(alice, 1, "from alice"), update(bob, 1, "from bob"))
    winners = [ack for ack in acks if ack["ok"]]
    losers = [ack for ack in acks if not ack["ok"]]
    assert len(winners) == len(losers) == 1, acks
    winner = winners[0]["document"]
    assert winner["version"] == 1
    assert losers[0]["error"]["code"] == "VERSION_CONFLICT"
    assert losers[0]["error"]["details"] == {"current_version": 1, "document": winner}
    assert (await stored(server)) == winner


@pytest.mark.parametrize("new_role, code", [(None, "NOT_FOUND"), ("viewer", "PERMISSION_DENIED")],
                         ids=["revoked", "downgraded"])
async def test_editor_losing_the_role_can_no_longer_update(server, new_role, code):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await shared_doc(alice, bob="editor")
    await bob.ok("documents:join", {"document_id": "doc"})
    current = (await update(bob, version=1))["document"]
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": new_role})
    if new_role is None:  # taken out of the room, and told so
        assert await bob.next("error") == revoked_error()
    await bob.fails("documents:update", {"document_id": "doc", "content": "x", "version": 2}, code)
    assert (await stored(server)) == current


@pytest.mark.parametrize("payload, field", [
    ({"document_id": "doc", "content": "x", "version": 0}, "version"),
    ({"document_id": "doc", "content": "x", "version": "1"}, "version"),
    ({"document_id": "doc", "content": "x", "version": 1.5}, "version"),
    ({"document_id": "doc", "content": "x", "version": True}, "version"),
    ({"document_id": "doc", "content": "x"}, "version"),
    ({"document_id": "doc", "version": 1}, "content"),
    ({"document_id": "doc", "content": None, "version": 1}, "content"),
    ({"content": "x", "version": 1}, "document_id"),
])
async def test_update_with_an_invalid_field_is_invalid_input(server, payload, field):
    alice = await server.connect("alice")
    original = await create_doc(alice)
    error = await alice.fails("documents:update", payload, "INVALID_INPUT")
    assert set(error["details"]) == {field}
    assert (await stored(server)) == original


# -- documents:leave ------------------------------------------------------------


async def test_leave_acks_empty_and_stops_broadcasts(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await shared_doc(alice, bob="editor")
    await alice.ok("documents:join", {"document_id": "doc"})
    assert await alice.call("documents:leave", {"document_id": "doc"}) == {"ok": True}
    await update(bob, version=1)
    await round_trip(alice)
    assert alice.pending("documents:updated") == []


# -- size limit -----------------------------------------------------------------


class TestContentLimit:
    """``max_document_bytes`` counts UTF-8 bytes, on create and on update."""

    LIMIT = 16

    @pytest.fixture
    def settings(self):
        return make_settings(max_document_bytes=self.LIMIT)

    @pytest.mark.parametrize("content", [
        "x" * 16,
        "\u00e9" * 8,  # 2 bytes each
        "\u20ac" * 5 + "x",  # 3 bytes each
        "\U0001f600" * 4,  # 4 bytes each
    ], ids=["ascii", "2-byte", "3-byte", "4-byte"])
    async def test_content_at_the_limit_is_accepted(self, server, content):
        alice = await server.connect("alice")
        await create_doc(alice, content=content)
        assert (await update(alice, 1, content))["ok"] is True

    @pytest.mark.parametrize("content", [
        "x" * 17,
        "\u00e9" * 9,  # 9 characters, 18 bytes
        "\u20ac" * 6,  # 6 characters, 18 bytes
        "\U0001f600" * 4 + "x",  # 5 characters, 17 bytes
    ], ids=["ascii", "2-byte", "3-byte", "4-byte"])
    async def test_update_over_the_limit_is_payload_too_large(self, server, content):
        alice = await server.connect("alice")
        bob = await server.connect("bob")
        original = await shared_doc(alice, content="small", bob="viewer")
        await bob.ok("documents:join", {"document_id": "doc"})
        error = await alice.fails("documents:update",
                                  {"document_id": "doc", "content": content, "version": 1},
                                  "PAYLOAD_TOO_LARGE")
        assert error["details"] == {"limit": self.LIMIT}
        assert (await stored(server)) == original
        await round_trip(bob)
        assert bob.pending("documents:updated") == []

    async def test_create_over_the_limit_is_payload_too_large(self, server):
        alice = await server.connect("alice")
        error = await alice.fails("documents:create",
                                  {"document_id": "doc", "content": "\u00e9" * 9},
                                  "PAYLOAD_TOO_LARGE")
        assert error["details"] == {"limit": self.LIMIT}
        assert (await create_doc(alice))["version"] == 0  # the id was not taken
