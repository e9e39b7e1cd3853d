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


# -- integers: what the stores hold, 64-bit signed (defect 12) ----------------------

INT64_MAX = 2**63 - 1
TOO_LARGE = [2**63, 2**64, 10**30]

INTEGER_FIELDS = [
    ("documents:update", {"document_id": "d1", "content": "x"}, "version"),
    ("chat:join", {"chat_id": "c1"}, "since_seq"),
    ("chat:history", {"chat_id": "c1"}, "before_seq"),
    ("chat:history", {"chat_id": "c1"}, "limit"),
]


@pytest.mark.parametrize("event, payload, field", INTEGER_FIELDS,
                         ids=[f"{e}-{f}" for e, _, f in INTEGER_FIELDS])
@pytest.mark.parametrize("value", TOO_LARGE, ids=["2^63", "2^64", "10^30"])
async def test_an_integer_past_64_bits_is_invalid_input(server, event, payload, field, value):
    alice = await setup(server)
    await refused(alice, event, {**payload, field: value}, field)
    await unchanged(server)
    assert server.app.sio.rooms(alice.sid) == [alice.sid]  # the join did not enter the room


async def test_the_largest_64_bit_integer_gets_the_natural_answer(server):
    alice = await setup(server)
    await alice.ok("chat:message", {"chat_id": "c1", "content": "m1"})
    error = await alice.fails(
        "documents:update", {"document_id": "d1", "content": "x", "version": INT64_MAX},
        "VERSION_CONFLICT")
    assert error["details"]["current_version"] == 0
    joined = await alice.ok("chat:join", {"chat_id": "c1", "since_seq": INT64_MAX})
    assert joined["messages"] == []
    page = await alice.ok("chat:history", {"chat_id": "c1", "before_seq": INT64_MAX})
    assert [m["content"] for m in page["messages"]] == ["m1"]
    page = await alice.ok("chat:history", {"chat_id": "c1", "limit": INT64_MAX})
    assert [m["content"] for m in page["messages"]] == ["m1"]


# -- text: a lone surrogate is valid JSON but no text (defect 11) --------------------

LONE_SURROGATE = "a\ud800b"  # sent as "a\\ud800b"; UTF-8, SQLite and BSON refuse it

TEXT_FIELDS = [
    ("documents:create", {"document_id": "d2", "title": LONE_SURROGATE}, "title"),
    ("documents:create", {"document_id": "d2", "content": LONE_SURROGATE}, "content"),
    ("documents:share", {"document_id": "d1", "user_id": LONE_SURROGATE, "role": "editor"},
     "user_id"),
    ("documents:update", {"document_id": "d1", "content": LONE_SURROGATE, "version": 1},
     "content"),
    ("chat:create", {"chat_id": "c2", "title": LONE_SURROGATE}, "title"),
    ("chat:create", {"chat_id": "c2", "members": ["bob", LONE_SURROGATE]}, "members"),
    ("chat:invite", {"chat_id": "c1", "user_id": LONE_SURROGATE}, "user_id"),
    ("chat:message", {"chat_id": "c1", "content": LONE_SURROGATE}, "content"),
    ("auth:refresh", {"token": LONE_SURROGATE}, "token"),
]


@pytest.mark.parametrize("event, payload, field", TEXT_FIELDS,
                         ids=[f"{e}-{f}" for e, _, f in TEXT_FIELDS])
async def test_a_lone_surrogate_in_a_text_field_is_invalid_input(server, event, payload, field):
    alice = await setup(server)
    identity = server.app.connections[alice.sid].identity
    await refused(alice, event, payload, field)
    await unchanged(server)
    assert server.app.connections[alice.sid].identity is identity  # auth:refresh changed nothing


@pytest.mark.parametrize("surrogate", ["\udfff", "\ud800\ud800", "\udc00\ud800"],
                         ids=["low", "two-highs", "reversed-pair"])
async def test_every_unpaired_surrogate_is_refused(server, surrogate):
    alice = await setup(server)
    await refused(alice, "chat:message", {"chat_id": "c1", "content": surrogate}, "content")
    await unchanged(server)


@pytest.mark.parametrize("event, payload, field", ID_FIELDS,
                         ids=[f"{e}-{f}" for e, _, f in ID_FIELDS])
async def test_a_lone_surrogate_in_an_id_field_is_invalid_input(server, event, payload, field):
    alice = await setup(server)
    await refused(alice, event, {**payload, field: LONE_SURROGATE}, field)
    await unchanged(server)


async def test_a_surrogate_pair_is_the_character_it_encodes(server):
    alice = await setup(server)
    # json.dumps sends the emoji as the escaped pair "\\ud83d\\ude00"
    ack = await alice.ok("chat:message", {"chat_id": "c1", "content": "\U0001F600"})
    assert ack["message"]["content"] == "\U0001F600"
    stored = await server.app.store.messages_after("c1", 0, 10)
    assert [m["content"] for m in stored] == ["\U0001F600"]


async def test_a_lone_surrogate_in_an_unknown_field_name_is_answered(server):
    """The name is echoed in ``details``: the answer must still encode."""
    alice = await setup(server)
    error = await alice.fails("chat:typing", {"chat_id": "c1", "typing": True,
                                              LONE_SURROGATE: 1}, "INVALID_INPUT")
    assert error["details"] == {LONE_SURROGATE: ["Unknown field."]}
    await alice.ok("chat:typing", {"chat_id": "c1", "typing": False})
