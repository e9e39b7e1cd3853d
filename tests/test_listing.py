"""documents:list and chat:list (PROTOCOL v2 "Listing"): what the user holds a role on,
newest activity first, paged by an opaque cursor that stays stable while things change.

Every test runs on the SQLite store and on the Mongo wire server.
"""

from __future__ import annotations

import pytest
from harness import make_settings


@pytest.fixture(params=["sqlite", "mongodb"])
def settings(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/collab.db" if request.param == "sqlite"
           else request.getfixturevalue("mongo_db"))
    return make_settings(storage_url=url, history_limit=2, history_max=3)


async def pages(client, event: str, key: str, limit: int | None = None) -> list[list[str]]:
    """Every page of a listing, as ids."""
    out: list[list[str]] = []
    payload: dict = {} if limit is None else {"limit": limit}
    while True:
        ack = await client.ok(event, payload)
        out.append([item["id"] for item in ack[key]])
        if "next" not in ack:
            return out
        payload = {**payload, "before": ack["next"]}


async def test_documents_are_listed_newest_activity_first_with_the_users_role(server):
    alice, bob = await server.connect("alice"), await server.connect("bob")
    for name in ("a", "b", "c"):
        await alice.ok("documents:create", {"document_id": f"doc-{name}", "title": name.upper()})
    await bob.ok("documents:create", {"document_id": "bobs"})
    await alice.ok("documents:share", {"document_id": "doc-a", "user_id": "bob",
                                       "role": "viewer"})
    await alice.ok("documents:update", {"document_id": "doc-a", "content": "x", "version": 1})

    listed = (await alice.ok("documents:list", {"limit": 3}))["documents"]
    assert [d["id"] for d in listed] == ["doc-a", "doc-c", "doc-b"]  # doc-a changed last
    assert listed[0] == {"id": "doc-a", "title": "A", "role": "owner", "version": 1,
                         "updated_at": listed[0]["updated_at"]}
    assert listed[0]["updated_at"] >= listed[1]["updated_at"]
    theirs = (await bob.ok("documents:list", {}))["documents"]
    assert [(d["id"], d["role"]) for d in theirs] == [("doc-a", "viewer"), ("bobs", "owner")]


async def test_chats_are_listed_by_their_last_message(server):
    alice, bob = await server.connect("alice"), await server.connect("bob")
    await alice.ok("chat:create", {"chat_id": "quiet", "title": "Q", "members": ["bob"]})
    await alice.ok("chat:create", {"chat_id": "busy", "title": "B"})
    await bob.ok("chat:create", {"chat_id": "bobs-own"})
    sent = (await alice.ok("chat:message", {"chat_id": "quiet", "content": "hi"}))["message"]

    listed = (await alice.ok("chat:list", {}))["chats"]
    assert [c["id"] for c in listed] == ["quiet", "busy"]
    assert listed[0] == {"id": "quiet", "title": "Q", "role": "owner", "last_seq": 1,
                         "last_message_at": sent["created_at"]}
    assert listed[1] == {"id": "busy", "title": "B", "role": "owner", "last_seq": 0,
                         "last_message_at": None}
    theirs = (await bob.ok("chat:list", {}))["chats"]
    assert [(c["id"], c["role"]) for c in theirs] == [("quiet", "member"), ("bobs-own", "owner")]


async def test_paging_is_stable_while_a_listed_document_changes(server):
    alice = await server.connect("alice")
    for i in range(5):
        await alice.ok("documents:create", {"document_id": f"d{i}"})
    first = await alice.ok("documents:list", {"limit": 2})
    assert [d["id"] for d in first["documents"]] == ["d4", "d3"]
    # d0, not yet listed, changes: it moves to the top, and the pages after the cursor
    # neither repeat what was listed nor skip what did not change
    await alice.ok("documents:update", {"document_id": "d0", "content": "new", "version": 1})
    rest = []
    payload = {"limit": 2, "before": first["next"]}
    while True:
        ack = await alice.ok("documents:list", payload)
        rest += [d["id"] for d in ack["documents"]]
        if "next" not in ack:
            break
        payload["before"] = ack["next"]
    assert rest == ["d2", "d1"]
    top = await alice.ok("documents:list", {"limit": 3})
    assert [d["id"] for d in top["documents"]] == ["d0", "d4", "d3"]


async def test_limit_defaults_and_caps(server):
    alice = await server.connect("alice")
    for i in range(4):
        await alice.ok("chat:create", {"chat_id": f"c{i}"})
    # history_limit (2 here) by default, history_max (3 here) at most
    assert await pages(alice, "chat:list", "chats") == [["c3", "c2"], ["c1", "c0"]]
    assert await pages(alice, "chat:list", "chats", limit=100) == [["c3", "c2", "c1"], ["c0"]]
    assert await pages(alice, "chat:list", "chats", limit=1) == [["c3"], ["c2"], ["c1"], ["c0"]]


async def test_an_admin_lists_only_their_own(server):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "alices"})
    root = await server.connect("root", role="admin")
    assert (await root.ok("documents:list", {}))["documents"] == []
    assert (await root.ok("chat:list", {}))["chats"] == []


@pytest.mark.parametrize("payload", [
    {"before": "garbage"}, {"before": ""}, {"before": "x" * 2000}, {"before": 5},
    {"limit": 0}, {"limit": "2"}, {"limit": True}, {"unknown": 1},
])
async def test_bad_pages_are_invalid_input(server, payload):
    alice = await server.connect("alice")
    for event in ("documents:list", "chat:list"):
        await alice.fails(event, payload, "INVALID_INPUT")


async def test_a_cursor_is_good_only_for_its_own_list_and_user(server):
    alice, bob = await server.connect("alice"), await server.connect("bob")
    for i in range(3):
        await alice.ok("documents:create", {"document_id": f"d{i}"})
        await alice.ok("chat:create", {"chat_id": f"c{i}", "members": ["bob"]})
    documents_next = (await alice.ok("documents:list", {"limit": 1}))["next"]
    chats_next = (await alice.ok("chat:list", {"limit": 1}))["next"]
    await alice.fails("chat:list", {"before": documents_next}, "INVALID_INPUT")
    await alice.fails("documents:list", {"before": chats_next}, "INVALID_INPUT")
    await bob.fails("chat:list", {"before": chats_next}, "INVALID_INPUT")
