"""The role check on every event and the roles a connection keeps between events
(collab/permissions.py): kept roles spare the store a read, and whatever takes a role
away (a downgrade, a revocation, a refreshed token) is seen at the next event."""

from __future__ import annotations

import asyncio

from harness import Client, make_token
from test_documents import round_trip, shared_doc, update

from collab.errors import Unavailable
from collab.permissions import MAX_KEPT, RoleCache


def count_reads(monkeypatch, server, name: str) -> list[tuple[str, str]]:
    """Every ``name`` role read the handlers make, as (id, user) pairs."""
    reads: list[tuple[str, str]] = []
    read = getattr(server.app.store, name)

    async def counted(rid: str, user_id: str) -> str | None:
        reads.append((rid, user_id))
        return await read(rid, user_id)

    monkeypatch.setattr(server.app.store, name, counted)
    return reads


async def make_chat(owner: Client, *members: str) -> str:
    return (await owner.ok("chat:create", {"title": "t", "members": list(members)}))["chat"]["id"]


async def post(client: Client, chat_id: str, content: str = "hi") -> dict:
    return await client.call("chat:message", {"chat_id": chat_id, "content": content})


async def test_a_chat_member_is_read_from_the_store_once(server, monkeypatch):
    alice, bob = await server.connect("alice"), await server.connect("bob")
    chat_id = await make_chat(alice, "bob")
    reads = count_reads(monkeypatch, server, "get_chat_role")
    for i in range(5):
        assert (await post(bob, chat_id, f"m{i}"))["ok"] is True
    await bob.ok("chat:typing", {"chat_id": chat_id, "typing": True})
    await bob.ok("chat:history", {"chat_id": chat_id})
    assert reads == [(chat_id, "bob")]
    assert (await post(alice, chat_id))["ok"] is True  # another connection: its own read
    assert reads == [(chat_id, "bob"), (chat_id, "alice")]


async def test_a_refusal_is_not_kept_so_an_invite_counts_at_once(server):
    alice, carol = await server.connect("alice"), await server.connect("carol")
    chat_id = await make_chat(alice)
    await carol.fails("chat:message", {"chat_id": chat_id, "content": "x"}, "NOT_FOUND")
    await alice.ok("chat:invite", {"chat_id": chat_id, "user_id": "carol"})
    assert (await post(carol, chat_id))["ok"] is True


async def test_a_downgraded_editor_is_refused_on_every_connection(server, monkeypatch):
    alice = await server.connect("alice")
    in_room, elsewhere = await server.connect("bob"), await server.connect("bob")
    await shared_doc(alice, bob="editor")
    await in_room.ok("documents:join", {"document_id": "doc"})
    reads = count_reads(monkeypatch, server, "get_document_role")
    assert (await update(in_room, 1, "one"))["ok"] is True
    assert (await update(elsewhere, 2, "two"))["ok"] is True  # never joined: kept all the same
    assert (await update(in_room, 3, "three"))["ok"] is True
    assert (await update(elsewhere, 4, "four"))["ok"] is True
    assert reads == [("doc", "bob")]  # elsewhere's; in_room kept the one of its join

    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": "viewer"})
    for client in (in_room, elsewhere):
        await client.fails("documents:update", {"document_id": "doc", "content": "x",
                                                "version": 5}, "PERMISSION_DENIED")
    # still a viewer: reads go on (from the role read again)
    await elsewhere.ok("documents:get", {"document_id": "doc"})
    assert (await alice.ok("documents:get", {"document_id": "doc"}))["document"]["version"] == 4


async def test_a_revoked_editor_is_refused_also_where_it_never_joined(server):
    alice = await server.connect("alice")
    in_room, elsewhere = await server.connect("bob"), await server.connect("bob")
    await shared_doc(alice, bob="editor")
    await in_room.ok("documents:join", {"document_id": "doc"})
    assert (await update(in_room, 1))["ok"] is True
    assert (await update(elsewhere, 2))["ok"] is True
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": None})
    await in_room.next("error")  # taken out of the room
    for client in (in_room, elsewhere):
        await client.fails("documents:update", {"document_id": "doc", "content": "x",
                                                "version": 3}, "NOT_FOUND")
    await elsewhere.fails("documents:get", {"document_id": "doc"}, "NOT_FOUND")


async def test_a_role_read_in_flight_when_it_is_revoked_is_not_kept(server, monkeypatch):
    """The read began before the revocation and answers "editor" after it: that update
    was checked before the role went, but the answer must not serve the next one."""
    alice, bob = await server.connect("alice"), await server.connect("bob")
    await shared_doc(alice, bob="editor")
    read = server.app.store.get_document_role
    answered, revoked = asyncio.Event(), asyncio.Event()

    async def read_then_pause(document_id: str, user_id: str) -> str | None:
        role = await read(document_id, user_id)
        if user_id == "bob" and not answered.is_set():
            answered.set()
            await revoked.wait()  # the whole revocation runs meanwhile
        return role

    monkeypatch.setattr(server.app.store, "get_document_role", read_then_pause)
    first = asyncio.ensure_future(update(bob, 1, "checked before"))
    await answered.wait()
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": None})
    revoked.set()
    assert (await first)["ok"] is True
    await bob.fails("documents:update", {"document_id": "doc", "content": "after",
                                         "version": 2}, "NOT_FOUND")


async def test_a_refreshed_token_keeps_none_of_the_old_ones_roles(server):
    alice = await server.connect("alice")
    admin_tab = await server.connect("bob", roles=["admin"])
    chat_id = await make_chat(alice)  # bob is no member: his admin token lets him in
    await shared_doc(alice)
    assert (await post(admin_tab, chat_id))["ok"] is True
    assert (await update(admin_tab, 1))["ok"] is True
    await admin_tab.ok("auth:refresh", {"token": make_token("bob")})
    await admin_tab.fails("chat:message", {"chat_id": chat_id, "content": "x"}, "NOT_FOUND")
    await admin_tab.fails("documents:update", {"document_id": "doc", "content": "x",
                                               "version": 2}, "NOT_FOUND")
    await round_trip(admin_tab)


async def test_a_share_that_fails_after_its_write_still_forgets(server, monkeypatch):
    """A store error after the write landed (a lost answer) must not leave the old role
    kept: the connection reads the role again."""
    alice, bob = await server.connect("alice"), await server.connect("bob")
    await shared_doc(alice, bob="editor")
    assert (await update(bob, 1))["ok"] is True  # kept: editor
    write = server.app.store.set_document_role

    async def write_then_fail(document_id: str, user_id: str, role: str | None) -> dict:
        await write(document_id, user_id, role)
        raise Unavailable("lost the answer")

    monkeypatch.setattr(server.app.store, "set_document_role", write_then_fail)
    await alice.fails("documents:share", {"document_id": "doc", "user_id": "bob",
                                          "role": "viewer"}, "UNAVAILABLE")
    await bob.fails("documents:update", {"document_id": "doc", "content": "x",
                                         "version": 2}, "PERMISSION_DENIED")


def test_the_cache_is_bounded_and_forgets_what_it_is_told():
    roles = RoleCache()
    for i in range(3 * MAX_KEPT):
        roles.put("chat" if i % 2 else "document", f"id{i}", "member", roles.generation)
        assert sum(1 for j in range(i + 1) for kind in ("chat", "document")
                   if roles.get(kind, f"id{j}")) <= MAX_KEPT
    last = f"id{3 * MAX_KEPT - 1}"
    assert roles.get("chat", last) == "member"
    roles.forget("chat", last)
    assert roles.get("chat", last) is None
    stale = roles.generation - 1  # a read begun before that forget
    roles.put("chat", last, "member", stale)
    assert roles.get("chat", last) is None
    alone, shared = RoleCache(documents=True), RoleCache(documents=False)
    for cache in (alone, shared):
        cache.put("document", "d", "editor", cache.generation)
        cache.put("chat", "c", "member", cache.generation)
    assert (alone.get("document", "d"), shared.get("document", "d")) == ("editor", None)
    assert shared.get("chat", "c") == "member"  # chat roles are kept everywhere
