"""The web app at ``/`` (issue 13): served by the server, then used in real Chromium by
two users at once, beside real Socket.IO clients, across server restarts.

Every browser test ends with a screenshot of each page under tests/artifacts/ and fails
on any uncaught error in a page (tests/browser.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import socketio
import tornado.httpserver
import tornado.testing
import tornado.web
from browser import REPO, browsing, ensure_built_app, missing
from harness import Client, YjsProviders, make_token
from process import CollabProcess
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from collab.webapp import ASSET_MAX_AGE, BUILD_COMMAND, webapp_routes

try:
    from playwright.async_api import expect
except ImportError:  # browsing() fails in CI and skips elsewhere
    expect = None

#: the editor's text as the user sees it: its lines, without other users' carets
#: (CodeMirror draws those inside .cm-content as contenteditable=false widgets)
EDITOR_TEXT = """(el) => Array.from(el.querySelectorAll('.cm-line'), (line) => {
    const copy = line.cloneNode(true);
    copy.querySelectorAll('[contenteditable="false"]').forEach((w) => w.remove());
    return copy.textContent;
}).join('\\n')"""
#: the restart test's waits: a reconnection backs off up to 5 s (web/src/session.js)
RECONNECT_MS = 20_000


@pytest.fixture(scope="module")
def built_app():
    return ensure_built_app()


async def editor_text(page) -> str:
    return await page.testid("editor").evaluate(EDITOR_TEXT)


async def editor_shows(page, expected: str, timeout: float = 10) -> None:
    """Wait until the editor holds ``expected`` (it changes with remote edits)."""
    # (the editor is made once the join's ack is in: until then there is none to read)
    await page.page.wait_for_function(
        f"""(expected) => {{
            const editor = document.querySelector('.cm-content');
            return editor !== null && ({EDITOR_TEXT})(editor) === expected;
        }}""",
        arg=expected, timeout=timeout * 1000,
    )


async def ready_to_edit(page) -> None:
    await expect(page.testid("editor")).to_have_attribute("contenteditable", "true")


def message_texts(page):
    return page.testid("chat-messages").locator("li .text")


async def stored(client, document_id: str, content: str) -> dict:
    """The stored document once its content is ``content``: a plain member's join, then
    its ``documents:updated`` events (every change reaches members in version order)."""
    ack = await client.ok("documents:join", {"document_id": document_id})
    document = ack["document"]
    while document["content"] != content:
        document = (await client.next("documents:updated", timeout=10))["document"]
    await client.ok("documents:leave", {"document_id": document_id})
    return document


async def connect(url: str, token: str) -> Client:
    """A Socket.IO client of a server in a child process."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return Client(sio)


# -- serving the app -----------------------------------------------------------------


async def serve_routes(root: Path):
    app = tornado.web.Application(webapp_routes(root))
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{port}"


async def test_without_a_build_the_page_says_how_to_build_it(tmp_path):
    server, url = await serve_routes(tmp_path)
    try:
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(url + "/")
        response = refused.value.response
        assert response.code == 503
        assert response.headers["Cache-Control"] == "no-store"
        body = response.body.decode()
        assert "not built" in body and BUILD_COMMAND.replace("&", "&amp;") in body
        with pytest.raises(HTTPClientError) as missing:
            await AsyncHTTPClient().fetch(url + "/assets/main.js")
        assert missing.value.code == 404
    finally:
        server.stop()


async def test_the_page_revalidates_and_hashed_assets_are_kept(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<script src="assets/main-ABC123.js"></script>')
    (tmp_path / "assets" / "main-ABC123.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside assets/")
    server, url = await serve_routes(tmp_path)
    client = AsyncHTTPClient()
    try:
        page = await client.fetch(url + "/")
        assert page.code == 200 and page.body.startswith(b"<script")
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["Cache-Control"] == "no-cache"
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        with pytest.raises(HTTPClientError) as unchanged:
            await client.fetch(url + "/", headers={"If-None-Match": page.headers["ETag"]})
        assert unchanged.value.code == 304

        asset = await client.fetch(url + "/assets/main-ABC123.js")
        assert asset.body == b"console.log(1)"
        assert asset.headers["Content-Type"].split(";")[0] in (
            "application/javascript", "text/javascript")
        assert asset.headers["Cache-Control"] == f"public, max-age={ASSET_MAX_AGE}, immutable"
        for outside in ("/assets/../secret.txt", "/assets/%2e%2e/secret.txt", "/secret.txt"):
            with pytest.raises(HTTPClientError) as refused:
                await client.fetch(url + outside)
            assert refused.value.code in (403, 404), outside
    finally:
        server.stop()


async def test_the_server_serves_the_built_app_at_the_root(server, built_app):
    page = await AsyncHTTPClient().fetch(server.url + "/")
    scripts = re.findall(r'src="(assets/main-[A-Z0-9]+\.js)"', page.body.decode())
    assert len(scripts) == 1, page.body
    bundle = await AsyncHTTPClient().fetch(f"{server.url}/{scripts[0]}")
    assert len(bundle.body) > 100_000  # CodeMirror, Yjs and socket.io-client inside
    health = await AsyncHTTPClient().fetch(server.url + "/healthz")  # the others unchanged
    assert health.code == 200


# -- signing in ---------------------------------------------------------------------------


async def test_without_a_token_the_page_says_how_to_get_one(server, built_app):
    async with browsing(server.url, "no token") as web:
        page = await web.open("nobody", sign_in=False)
        await expect(page.status).to_have_text("signed out")
        await expect(page.testid("signed-out")).to_contain_text("collab token YOUR_NAME --url")

        forged = make_token("mallory", key="not-the-server-secret-0123456789abcdef")
        page = await web.open("mallory", token=forged)
        await expect(page.status).to_have_text("signed out")
        await expect(page.testid("signed-out")).to_contain_text("did not accept")
        assert await page.page.evaluate("sessionStorage.length") == 0


async def test_the_token_moves_from_the_address_bar_to_the_tab(server, built_app):
    alice = await server.connect("alice")
    for i in range(3):
        await alice.ok("documents:create", {"document_id": f"d{i}", "title": f"Doc {i}"})
    bob = await server.connect("bob")
    await bob.ok("documents:create", {"document_id": "bobs", "title": "Bob's own"})
    token = make_token("alice")
    async with browsing(server.url, "sign in") as web:
        page = await web.open("alice", token=token)
        await expect(page.status).to_have_text("connected")
        assert page.page.url == server.url + "/#/"
        assert await page.page.evaluate("sessionStorage.getItem('collab.token')") == token
        await page.page.go_back()  # replaced, not pushed: the token is not in the history
        assert page.page.url == "about:blank"
        await page.page.go_forward()
        assert page.page.url == server.url + "/#/"

        links = page.testid("document-list").locator("a")
        await expect(links).to_have_count(3)  # only what alice holds a role on
        found = {await a.inner_text(): await a.get_attribute("href") for a in await links.all()}
        assert found == {f"Doc {i}": f"#/documents/d{i}" for i in range(3)}

        # routes change by the fragment alone: the page is never loaded again
        await page.page.evaluate("window.notReloaded = true")
        await links.filter(has_text="Doc 1").click()
        await ready_to_edit(page)
        assert page.page.url == server.url + "/#/documents/d1"
        await page.page.go_back()
        await expect(page.testid("document-list").locator("a")).to_have_count(3)
        assert await page.page.evaluate("window.notReloaded") is True

        await page.page.reload()  # the tab keeps its sign-in
        await expect(page.status).to_have_text("connected")
        await expect(page.testid("document-list").locator("a")).to_have_count(3)


async def test_an_expired_sign_in_shows_signed_out(server, built_app):
    async with browsing(server.url, "expired") as web:
        page = await web.open("alice", token=make_token("alice", ttl=3))
        await expect(page.status).to_have_text("connected")
        # the server sends UNAUTHORIZED and disconnects at the token's expiry
        await expect(page.status).to_have_text("signed out", timeout=10_000)
        await expect(page.testid("signed-out")).to_contain_text("expired")


# -- home ---------------------------------------------------------------------------------


async def test_home_creates_shares_and_invites(server, built_app):
    bob = await server.connect("bob")
    async with browsing(server.url, "home") as web:
        page = await web.open("alice")
        await expect(page.status).to_have_text("connected")

        await page.testid("new-document-title").fill("Plans")
        await page.testid("new-document").get_by_role("button").click()
        await expect(page.page).to_have_url(re.compile(r"#/documents/[A-Za-z0-9_.:-]+$"))
        document_id = page.page.url.rsplit("/", 1)[1]
        # no wait for the join: the editor appears when it may be typed into
        await page.testid("editor").click()
        await page.page.keyboard.type("first words")
        await expect(page.testid("role")).to_have_text("owner")

        await page.page.evaluate("location.hash = '#/'")
        await page.testid("new-chat-title").fill("Team")
        await page.testid("new-chat").get_by_role("button").click()
        await expect(page.page).to_have_url(re.compile(r"#/chats/[A-Za-z0-9_.:-]+$"))
        chat_id = page.page.url.rsplit("/", 1)[1]

        await page.page.evaluate("location.hash = '#/'")
        row = page.testid("document-list").locator(f'li[data-id="{document_id}"]')
        await expect(row.locator("a")).to_have_text("Plans")
        await row.locator("summary").click()
        await row.get_by_label("user id to share with").fill("bob")
        await row.get_by_label("role").select_option("viewer")
        await row.get_by_role("button", name="Share").click()
        await expect(row.locator(".outcome")).to_have_text("bob can view")

        chat_row = page.testid("chat-list").locator(f'li[data-id="{chat_id}"]')
        await expect(chat_row.locator("a")).to_have_text("Team")
        await chat_row.locator("summary").click()
        await chat_row.get_by_label("user id to invite").fill("bob")
        await chat_row.get_by_role("button", name="Invite").click()
        await expect(chat_row.locator(".outcome")).to_have_text("bob invited")

    assert (await stored(bob, document_id, "first words"))["title"] == "Plans"
    documents = (await bob.ok("documents:list", {}))["documents"]
    assert [(d["id"], d["title"], d["role"]) for d in documents] == [
        (document_id, "Plans", "viewer")]
    chats = (await bob.ok("chat:list", {}))["chats"]
    assert [(c["id"], c["title"], c["role"]) for c in chats] == [(chat_id, "Team", "member")]


# -- documents ----------------------------------------------------------------------------


async def test_two_users_type_at_once_and_converge(server, built_app):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "notes", "title": "Notes",
                                        "content": "first line\nsecond line"})
    await alice.ok("documents:share", {"document_id": "notes", "user_id": "bob", "role": "editor"})
    async with browsing(server.url, "converge") as web:
        a = await web.open("alice", "#/documents/notes")
        b = await web.open("bob", "#/documents/notes")
        for page in (a, b):
            await ready_to_edit(page)
            await expect(page.testid("presence").locator("li")).to_have_text(["alice", "bob"])
            await editor_shows(page, "first line\nsecond line")
        await expect(a.page.locator("h1")).to_have_text("Notes")

        # alice at the end of the first line, bob at the end of the text, typing together
        await a.testid("editor").click()
        await a.page.keyboard.press("Control+Home")
        await a.page.keyboard.press("End")
        await b.testid("editor").click()
        await b.page.keyboard.press("Control+End")
        await asyncio.gather(a.page.keyboard.type(" typed by alice", delay=15),
                             b.page.keyboard.type(" typed by bob", delay=15))
        expected = "first line typed by alice\nsecond line typed by bob"
        await editor_shows(a, expected)
        await editor_shows(b, expected)

        # each sees the other's cursor, named and in that user's colour
        await expect(a.testid("editor").locator(".cm-ySelectionInfo")).to_have_text("bob")
        await expect(b.testid("editor").locator(".cm-ySelectionInfo")).to_have_text("alice")
        # and a selection: alice selects her line, bob sees it highlighted
        await a.page.keyboard.press("Control+Home")
        await a.page.keyboard.press("Shift+End")
        await expect(b.testid("editor").locator(".cm-ySelection")).to_have_text(
            "first line typed by alice")

        document = await stored(alice, "notes", expected)
        assert document["version"] > 0  # edits merged while one is in flight: fewer
        for page in (a, b):
            await expect(page.testid("version")).to_have_text(f"version {document['version']}")


async def test_a_browser_and_the_stock_y_websocket_provider_edit_one_document(server, built_app):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "shared", "title": "Shared",
                                        "content": "from the start"})
    await alice.ok("documents:share", {"document_id": "shared", "user_id": "bob",
                                       "role": "editor"})
    providers = await YjsProviders.start()
    try:
        async with browsing(server.url, "y-websocket") as web:
            page = await web.open("alice", "#/documents/shared")
            await ready_to_edit(page)
            await providers.open("bob", server.url, "shared", token=make_token("bob"))
            await providers.text_is("bob", "from the start")
            # both at once: the browser types at the end, the provider inserts in front
            await page.testid("editor").click()
            await page.page.keyboard.press("Control+End")
            typing = asyncio.ensure_future(page.page.keyboard.type(" + browser", delay=15))
            await providers.call("insert", name="bob", index=0, text="provider: ")
            await typing
            expected = "provider: from the start + browser"
            await editor_shows(page, expected)
            await providers.text_is("bob", expected)
            assert (await stored(alice, "shared", expected))["content"] == expected
    finally:
        await providers.close()


async def test_presence_follows_users_in_and_out(server, built_app):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "room", "title": "Room"})
    for user in ("bob", "carol"):
        await alice.ok("documents:share", {"document_id": "room", "user_id": user,
                                           "role": "editor"})
    carol = await server.connect("carol")  # a plain Socket.IO member
    await carol.ok("documents:join", {"document_id": "room"})
    async with browsing(server.url, "presence") as web:
        a = await web.open("alice", "#/documents/room")
        await expect(a.testid("presence").locator("li")).to_have_text(["alice", "carol"])
        b = await web.open("bob", "#/documents/room")
        await expect(b.testid("presence").locator("li")).to_have_text(["alice", "bob", "carol"])
        await expect(a.testid("presence").locator("li")).to_have_text(["alice", "bob", "carol"])
        await carol.ok("documents:leave", {"document_id": "room"})
        await expect(a.testid("presence").locator("li")).to_have_text(["alice", "bob"])
        await b.page.evaluate("location.hash = '#/'")  # bob leaves by navigating away
        await expect(a.testid("presence").locator("li")).to_have_text(["alice"])
        assert (await carol.next("user:joined"))["user_id"] == "alice"


async def test_a_viewer_opens_read_only(server, built_app):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "rules", "content": "read me"})
    await alice.ok("documents:share", {"document_id": "rules", "user_id": "bob", "role": "viewer"})
    async with browsing(server.url, "viewer") as web:
        b = await web.open("bob", "#/documents/rules")
        await expect(b.testid("role")).to_have_text("viewer (read-only)")
        await editor_shows(b, "read me")
        await expect(b.testid("editor")).to_have_attribute("contenteditable", "false")
        await b.testid("editor").click()
        await b.page.keyboard.type("not allowed")
        # the next change seen is alice's: bob's typing went nowhere
        await alice.ok("documents:update", {"document_id": "rules", "content": "read me now",
                                            "version": 1})
        await editor_shows(b, "read me now")
        await expect(b.testid("version")).to_have_text("version 1")
    assert (await stored(alice, "rules", "read me now"))["version"] == 1


async def test_history_shows_versions_and_restores_one(server, built_app):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "essay", "content": "draft one"})
    await alice.ok("documents:update", {"document_id": "essay", "content": "draft two",
                                        "version": 1})
    await alice.ok("documents:update", {"document_id": "essay", "content": "draft three",
                                        "version": 2})
    async with browsing(server.url, "history") as web:
        page = await web.open("alice", "#/documents/essay")
        await editor_shows(page, "draft three")
        versions = page.testid("history").locator("li")
        await expect(versions).to_have_count(3)
        await versions.filter(has_text="version 0").get_by_role("button", name="view").click()
        await expect(page.testid("history-preview")).to_have_text("draft one")

        await versions.filter(has_text="version 1").get_by_role("button", name="restore").click()
        await editor_shows(page, "draft two")
        await expect(page.testid("version")).to_have_text("version 3")
        await expect(versions).to_have_count(4)
    assert (await stored(alice, "essay", "draft two"))["version"] == 3


async def test_what_does_not_exist_or_is_not_yours_says_so(server, built_app):
    bob = await server.connect("bob")
    await bob.ok("documents:create", {"document_id": "private"})
    await bob.ok("chat:create", {"chat_id": "secret"})
    async with browsing(server.url, "no access") as web:
        page = await web.open("alice", "#/documents/private")
        await expect(page.page.get_by_role("alert")).to_have_text(
            "This document does not exist, or you have no access to it.")
        await expect(page.testid("editor")).to_have_count(0)
        await page.page.evaluate("location.hash = '#/chats/secret'")
        await expect(page.page.get_by_role("alert")).to_have_text(
            "This chat does not exist, or you are not a member of it.")
        await page.page.evaluate("location.hash = '#/nowhere'")
        await expect(page.page.locator("h1")).to_have_text("Nothing here")
        await expect(page.status).to_have_text("connected")


# -- chats --------------------------------------------------------------------------------


async def test_chat_both_ways_with_typing_and_presence(server, built_app):
    alice = await server.connect("alice")
    await alice.ok("chat:create", {"chat_id": "team", "title": "Team",
                                   "members": ["bob", "carol"]})
    carol = await server.connect("carol")  # beside the browsers: a Socket.IO client
    await carol.ok("chat:join", {"chat_id": "team"})
    async with browsing(server.url, "chat") as web:
        a = await web.open("alice", "#/chats/team")
        b = await web.open("bob", "#/chats/team")
        for page in (a, b):
            await expect(page.testid("presence").locator("li")).to_have_text(
                ["alice", "bob", "carol"])

        await a.testid("chat-input").fill("hello from alice")
        await a.testid("chat-input").press("Enter")
        await expect(a.testid("chat-input")).to_have_value("")
        for page in (a, b):
            await expect(message_texts(page)).to_have_text(["hello from alice"])
        got = await carol.next("chat:message")
        assert got["message"]["content"] == "hello from alice"
        assert got["message"]["user_id"] == "alice"

        await carol.ok("chat:message", {"chat_id": "team", "content": "carol over Socket.IO"})
        await b.testid("chat-input").fill("bob from the browser")
        await b.testid("chat-input").press("Enter")
        for page in (a, b):  # each message once, in seq order
            await expect(message_texts(page)).to_have_text(
                ["hello from alice", "carol over Socket.IO", "bob from the browser"])
            seqs = await page.testid("chat-messages").locator("li").evaluate_all(
                "(items) => items.map((li) => Number(li.dataset.seq))")
            assert seqs == [1, 2, 3]
        assert (await carol.next("chat:message"))["message"]["content"] == "carol over Socket.IO"
        assert (await carol.next("chat:message"))["message"]["content"] == "bob from the browser"

        # typing: shown to the others, and to the Socket.IO client as events; each
        # message typed was one "typing", and Enter said "stopped" before it went
        assert carol.pending("chat:typing") == [
            {"chat_id": "team", "user_id": user, "typing": typing}
            for user in ("alice", "bob") for typing in (True, False)]
        await b.testid("chat-input").press_sequentially("thinking")
        await expect(a.testid("typing")).to_have_text("bob is typing...")
        assert await carol.next("chat:typing") == {"chat_id": "team", "user_id": "bob",
                                                   "typing": True}
        await b.testid("chat-input").fill("")  # an emptied input: no longer typing
        await expect(a.testid("typing")).to_have_text("")
        await carol.ok("chat:typing", {"chat_id": "team", "typing": True})
        await expect(b.testid("typing")).to_have_text("carol is typing...")

        await carol.ok("chat:leave", {"chat_id": "team"})
        for page in (a, b):
            await expect(page.testid("presence").locator("li")).to_have_text(["alice", "bob"])
            await expect(page.testid("typing")).to_have_text("")


async def test_chat_history_pages_in_on_scrolling_up(server, built_app):
    # three connections: each has its own rate limit (50 a second, bursts of 100)
    writers = [await server.connect("alice") for _ in range(3)]
    await writers[0].ok("chat:create", {"chat_id": "long"})
    for seq in range(1, 121):
        await writers[seq % 3].ok("chat:message", {"chat_id": "long", "content": f"m{seq}"})
    async with browsing(server.url, "chat paging") as web:
        page = await web.open("alice", "#/chats/long")
        items = page.testid("chat-messages").locator("li")
        await expect(items).to_have_count(50)  # the latest page (history_limit)
        await expect(items.first.locator(".text")).to_have_text("m71")
        await expect(items.last.locator(".text")).to_have_text("m120")
        scroller = page.page.locator(".scroller")
        await scroller.evaluate("(el) => { el.scrollTop = 0 }")
        await expect(items).to_have_count(100)
        await scroller.evaluate("(el) => { el.scrollTop = 0 }")
        await expect(items).to_have_count(120)
        await expect(page.page.locator(".older")).to_have_text("The beginning of the chat.")
        texts = await items.locator(".text").all_inner_texts()
        assert texts == [f"m{seq}" for seq in range(1, 121)]


# -- reconnection -------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path):
    proc = CollabProcess(tmp_path)
    yield proc
    proc.kill()


async def test_the_page_recovers_after_the_server_restarts(node, built_app):
    node.start()
    tokens = {user: node.token(user) for user in ("alice", "bob")}
    alice = await connect(node.url, tokens["alice"])
    await alice.ok("documents:create", {"document_id": "d", "content": "start"})
    await alice.ok("documents:share", {"document_id": "d", "user_id": "bob", "role": "editor"})
    await alice.ok("chat:create", {"chat_id": "c", "members": ["bob"]})
    await alice.disconnect()

    async with browsing(node.url, "restart") as web:
        a = await web.open("alice", "#/documents/d", token=tokens["alice"])
        b = await web.open("bob", "#/chats/c", token=tokens["bob"])
        await ready_to_edit(a)
        await editor_shows(a, "start")
        await expect(b.status).to_have_text("connected")
        text = "start"
        for stop in (node.terminate, node.kill):  # a graceful restart, then a crash
            await asyncio.get_running_loop().run_in_executor(None, stop)
            for page in (a, b):
                await expect(page.status).to_have_text("reconnecting...")
            # while the server is away: edits stay in the document, messages in the outbox
            await a.testid("editor").click()
            await a.page.keyboard.press("Control+End")
            word = f" {stop.__name__}"
            await a.page.keyboard.type(word)
            text += word
            await b.testid("chat-input").fill(f"sent during {stop.__name__}")
            await b.testid("chat-input").press("Enter")
            await expect(b.testid("chat-outbox").locator("li")).to_have_count(1)

            await asyncio.get_running_loop().run_in_executor(None, node.start)
            for page in (a, b):
                await expect(page.status).to_have_text("connected", timeout=RECONNECT_MS)
            await expect(b.testid("chat-outbox").locator("li")).to_have_count(0)
            await expect(a.testid("presence").locator("li")).to_have_text(["alice"])
            await ready_to_edit(a)

        await expect(message_texts(b)).to_have_text(["sent during terminate", "sent during kill"])
        # each word typed offline went as one update at the rejoin: one version each
        await expect(a.testid("version")).to_have_text("version 2")
        await expect(a.testid("history").locator("li")).to_have_count(3)

        checker = await connect(node.url, tokens["alice"])
        assert text == "start terminate kill"
        await stored(checker, "d", text)
        history = await checker.ok("chat:history", {"chat_id": "c"})
        assert [m["content"] for m in history["messages"]] == [
            "sent during terminate", "sent during kill"]  # each stored once
        await checker.disconnect()


# -- packaging ------------------------------------------------------------------------------


def clean_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone has them: tracked and new files, nothing
    ignored (no node_modules, no build), from the working tree as it stands."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def build_wheel(source: Path, out: Path, path: str) -> tuple[Path, str]:
    """``pip wheel`` of ``source`` with ``PATH``; the wheel unpacked, and pip's output."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(source)],
        env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    unpacked = out / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    return unpacked, result.stdout + result.stderr


def files_in(unpacked: Path) -> list[str]:
    return sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file())


def serve_from(unpacked: Path, tmp_path: Path, name: str) -> CollabProcess:
    """``collab serve`` importing collab from the unpacked wheel (the test's own
    environment provides the dependencies)."""
    return CollabProcess(tmp_path / name, env={"PYTHONPATH": str(unpacked)}).start()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs the git checkout")
def test_a_wheel_from_a_clean_clone_serves_the_built_app(tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing("node and npm are needed to build the web app")
    source = clean_copy(tmp_path / "clone")
    assert not (source / "collab" / "static").exists()
    bare_source = clean_copy(tmp_path / "clone-without-node")
    unpacked, _ = build_wheel(source, tmp_path / "with-node", os.environ["PATH"])
    names = files_in(unpacked)
    assert "collab/static/index.html" in names
    bundles = [n for n in names if re.fullmatch(r"collab/static/assets/main-[A-Z0-9]+\.js", n)]
    assert len(bundles) == 1, names
    assert not any("node_modules" in n or n.startswith("web/") for n in names)
    node = serve_from(unpacked, tmp_path, "served")
    try:
        status, page = fetch(node.url + "/")
        assert status == 200 and bundles[0].removeprefix("collab/static/").encode() in page
        status, bundle = fetch(f"{node.url}/{bundles[0].removeprefix('collab/static/')}")
        assert status == 200 and bundle == (unpacked / bundles[0]).read_bytes()
    finally:
        node.kill()

    # without Node on the PATH: a wheel all the same, without the app, and it says why
    bare = tmp_path / "bin"
    bare.mkdir()
    unpacked, output = build_wheel(bare_source, tmp_path / "without-node", str(bare))
    names = files_in(unpacked)
    assert not any(n.startswith("collab/static/") for n in names)
    assert "collab/webapp.py" in names
    assert "Node.js and npm were not found" in output
    node = serve_from(unpacked, tmp_path, "unbuilt")
    try:  # the server runs, and / says how to build the app
        status, page = fetch(node.url + "/")
        assert status == 503 and b"npm ci --prefix web" in page
        assert fetch(node.url + "/healthz")[0] == 200
    finally:
        node.kill()
