"""Hostile values in well-formed payloads: each is ``INVALID_INPUT`` and changes nothing.

Every test runs on SQLite and on MongoDB, since what used to get through
validation failed differently in each store (``INTERNAL_ERROR`` either way).
"""

from __future__ import annotations

import pytest
from harness import Client, make_settings


@pytest.fixture(params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongo)])
def settings(request):
    if request.param == "sqlite":
        return make_settings()
    return make_settings(storage_url=request.getfixturevalue("mongo_db"),
                         mongodb_server_selection_timeout_ms=1000)


async def setup(server) -> Client:
    """alice owns document d1 (at version 0) and chat c1 (with bob)."""
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "d1", "content": "v0"})
    await alice.ok("chat:create", {"chat_id": "c1", "members": ["bob"]})
    return alice


async def unchanged(server) -> None:
    """What :func:`setup` made is exactly as it was, and nothing else exists."""
    store = server.app.store
    document = await store.get_document("d1")
    assert (document["content"], document["version"]) == ("v0", 0)
    assert await store.get_document_acl("d1") == {"alice": "owner"}
    assert (await store.get_chat("c1"))["members"] == ["alice", "bob"]
    assert await store.messages_after("c1", 0, 10) == []
    for document_id in ("d2", "report", "report\n"):
        assert await store.get_document(document_id) is None
    for chat_id in ("c2", "report", "report\n"):
        assert await store.get_chat(chat_id) is None


async def refused(client: Client, event: str, payload: dict, field: str) -> None:
    error = await client.fails(event, payload, "INVALID_INPUT")
    assert field in error["details"], error


# -- ids: a full match, no trailing newline (defect 14) ---------------------------

ID_FIELDS = [
    ("documents:create", {}, "document_id"),
    ("documents:share", {"user_id": "bob", "role": "viewer"}, "document_id"),
    ("documents:join", {}, "document_id"),
    ("documents:leave", {}, "document_id"),
    ("documents:update", {"content": "x", "version": 1}, "document_id"),
    ("chat:create", {}, "chat_id"),
    ("chat:invite", {"user_id": "carol"}, "chat_id"),
    ("chat:join", {}, "chat_id"),
    ("chat:leave", {}, "chat_id"),
    ("chat:message", {"content": "x"}, "chat_id"),
    ("chat:history", {}, "chat_id"),
    ("chat:typing", {"typing": True}, "chat_id"),
    ("chat:message", {"chat_id": "c1", "content": "x"}, "client_id"),
]


@pytest.mark.parametrize("event, payload, field", ID_FIELDS,
                         ids=[f"{e}-{f}" for e, _, f in ID_FIELDS])
async def test_an_id_ending_in_a_newline_is_invalid_input(server, event, payload, field):
    alice = await setup(server)
    target = "d1" if field == "document_id" else "c1"
    if event in ("documents:create", "chat:create"):
        target = "report"
    await refused(alice, event, {**payload, field: target + "\n"}, field)
    await unchanged(server)


async def test_ids_beside_ones_with_a_newline_stay_distinct(server):
    alice = await setup(server)
    await alice.ok("documents:create", {"document_id": "report"})
    await alice.fails("documents:create", {"document_id": "report\n"}, "INVALID_INPUT")
    await alice.fails("documents:create", {"document_id": "report"}, "ALREADY_EXISTS")
    assert await server.app.store.get_document("report\n") is None
