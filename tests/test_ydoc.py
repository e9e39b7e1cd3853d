"""collab.ydoc.LiveDocument: Yjs updates, the v1 bridge, limits and hostile input.

Unicode is proven against real Yjs (tests/js/yjs_peer.mjs through the ``yjs``
fixture), not against pycrdt alone.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pycrdt
import pytest
from harness import DELETE_FIRST, nested_arrays, y_item, y_update

from collab.errors import InvalidInput, PayloadTooLarge
from collab.lib0 import read_state_vector, var_uint
from collab.surrogates import SurrogateIndex, high_units, may_hold_pairs
from collab.typedepth import MAX_TYPE_DEPTH, TypeDepths
from collab.ydoc import STATE_GROWTH_PER_UPDATE_BYTE, LiveDocument
from collab.yupdate import Kind, decode_update

ROOT = Path(__file__).resolve().parent.parent

UNICODE_CASES = [
    "plain ascii",
    "emoji 😀 in the middle",
    "😀😀😀",
    "e\u0301 combining acute, n\u0303, a\u0308\u0304",
    "中文 CJK 日本語 한국어",
    "ZWJ family 👨\u200d👩\u200d👧\u200d👦 and flag 🇫🇷",
    "mixed: é 😀 中 \U0001d400 \u200b ∑ 👍🏽",
    "\U00010348\U00010348",  # non-BMP, 4 UTF-8 bytes and a surrogate pair each
]


def pydoc(client_id: int) -> tuple[pycrdt.Doc, pycrdt.Text]:
    doc = pycrdt.Doc(client_id=client_id)
    return doc, doc.get("content", type=pycrdt.Text)


def edit(doc: pycrdt.Doc, change) -> bytes:
    """The update one pycrdt transaction made."""
    before = doc.get_state()
    with doc.transaction():
        change()
    return doc.get_update(before)


def panic_exception() -> BaseException:
    """A real pyo3 PanicException, raised by pycrdt itself (a delete inside a character)."""
    _, text = pydoc(1)
    text += "😀"
    try:
        del text[1:2]
    except BaseException as exc:  # noqa: B036 - that is the point
        return exc
    raise AssertionError("pycrdt no longer panics here")


# -- what pycrdt 0.14 does with indexes (the trap the bridge avoids) ---------------

def test_pycrdt_text_indexes_count_utf8_bytes_and_slices_count_code_points():
    _, text = pydoc(1)
    text += "a😀é中"
    assert len(text) == len("a😀é中".encode()) == 10  # UTF-8 bytes, not 4 code points
    assert text[1:2] == "😀"  # slices are code points of str(text)
    text.insert(5, "X")  # byte 5: just after the emoji
    assert str(text) == "a😀Xé中"
    text.insert(100, "!")  # past the end: appended, no error
    assert str(text) == "a😀Xé中!"


def test_pycrdt_insert_inside_a_character_appends_and_delete_inside_one_panics():
    _, text = pydoc(1)
    text += "a😀b"
    text.insert(2, "X")  # byte 2 is inside the emoji
    assert str(text) == "a😀bX"
    panic = panic_exception()
    assert type(panic).__name__ == "PanicException"
    assert not isinstance(panic, Exception) and isinstance(panic, BaseException)


# -- loading, applying, syncing ------------------------------------------------------

def test_new_load_and_snapshot_round_trip():
    doc = LiveDocument.new("hello 😀")
    assert doc.content == "hello 😀"
    assert doc.content_bytes == len("hello 😀".encode())
    later = doc.replace_content("hello 😀 world")
    assert later is not None
    assert LiveDocument.load(doc.snapshot()).content == "hello 😀 world"
    creation = LiveDocument.new("hello 😀").snapshot()
    loaded = LiveDocument.load(creation, [])
    assert loaded.content == "hello 😀"
    assert doc.state_size == len(doc.snapshot())
    assert LiveDocument.new().content == "" and LiveDocument.load(None).content == ""


def test_load_replays_updates_after_the_snapshot():
    client, text = pydoc(11)
    snapshot = edit(client, lambda: text.insert(0, "one"))
    updates = [edit(client, lambda: text.insert(len(text), " two")),
               edit(client, lambda: text.insert(len(text), " three"))]
    assert LiveDocument.load(snapshot, updates).content == "one two three"


def test_apply_returns_the_new_part_and_none_for_nothing_new():
    doc = LiveDocument.new()
    client, text = pydoc(21)
    update = edit(client, lambda: text.insert(0, "abc"))
    relayed = doc.apply(update)
    assert relayed is not None and doc.content == "abc"
    # what is relayed gives another peer the same document
    peer, peer_text = pydoc(22)
    peer.apply_update(relayed)
    assert str(peer_text) == "abc"
    state = doc.snapshot()
    assert doc.apply(update) is None  # seen already
    assert doc.apply(b"\x00\x00") is None  # the empty update
    assert doc.snapshot() == state


def test_an_update_with_old_and_new_parts_relays_only_the_new():
    doc = LiveDocument.new()
    client, text = pydoc(31)
    first = edit(client, lambda: text.insert(0, "old "))
    doc.apply(first)
    edit(client, lambda: text.insert(len(text), "new"))
    relayed = doc.apply(client.get_update())  # everything, old part included
    assert doc.content == "old new"
    fresh, fresh_text = pydoc(32)
    fresh.apply_update(first)
    fresh.apply_update(relayed)
    assert str(fresh_text) == "old new"
    assert len(relayed) < len(client.get_update())


def test_concurrent_edits_from_two_pycrdt_docs_merge():
    doc = LiveDocument.new("shared text")
    a, ta = pydoc(41)
    b, tb = pydoc(42)
    a.apply_update(doc.snapshot())
    b.apply_update(doc.snapshot())
    ua = edit(a, lambda: ta.insert(0, "A: "))
    ub = edit(b, lambda: (tb.insert(len(tb), " :B"), tb.__delitem__(slice(0, 7))))
    ra, rb = doc.apply(ua), doc.apply(ub)
    assert doc.content == "A: text :B"
    b.apply_update(ra)
    a.apply_update(rb)
    assert str(ta) == str(tb) == doc.content


def test_diff_against_state_vectors():
    doc = LiveDocument.new("base")
    client, text = pydoc(51)
    client.apply_update(doc.diff(b""))  # empty vector: everything
    assert str(text) == "base"
    assert doc.diff(b"\x00") == doc.diff(b"")
    doc.replace_content("base, and more")
    missing = doc.diff(client.get_state())
    assert len(missing) < len(doc.snapshot())
    client.apply_update(missing)
    assert str(text) == "base, and more"
    assert doc.state_vector() == client.get_state()


@pytest.mark.parametrize("vector", [
    b"\x01", b"\x01\x05", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x01\x05\x07junk",
    b"\x01" + b"\xff" * 10 + b"\x01", b"\x05\x01\x01", "not bytes",
])
def test_diff_refuses_undecodable_state_vectors(vector):
    doc = LiveDocument.new("x")
    with pytest.raises(InvalidInput):
        doc.diff(vector)


def test_updates_depending_on_missing_changes_are_refused_unchanged():
    doc = LiveDocument.new()
    client, text = pydoc(61)
    first = edit(client, lambda: text.insert(0, "hello"))
    gap = edit(client, lambda: text.insert(5, " world"))
    delete_unknown = edit(client, lambda: text.__delitem__(slice(0, 1)))
    state = doc.snapshot()
    for update in (gap, delete_unknown):
        with pytest.raises(InvalidInput, match="sync first"):
            doc.apply(update)
        assert doc.snapshot() == state
    # in order they apply; nothing was left behind by the refusals
    assert doc.apply(first) is not None and doc.content == "hello"
    assert doc.apply(gap) is not None and doc.apply(delete_unknown) is not None
    assert doc.content == "ello world"


# -- hostile input ---------------------------------------------------------------------

def rich_history() -> tuple[bytes, bytes]:
    """A base state and a later update touching text, map, array and XML types."""
    client = pycrdt.Doc(client_id=7)
    text = client.get("content", type=pycrdt.Text)
    text += "hello 😀 wörld"
    meta = client.get("m", type=pycrdt.Map)
    meta["k"] = pycrdt.Array([1, {"a": [1, 2]}, "x"])
    xml = client.get("x", type=pycrdt.XmlFragment)
    xml.children.append(pycrdt.XmlElement("p", {"a": "b"}, [pycrdt.XmlText("hi")]))
    base = client.get_update()
    before = client.get_state()
    with client.transaction():
        del text[2:5]
        text.insert(3, "中文")
        meta["z"] = pycrdt.Map({"q": pycrdt.Text("in")})
        xml.children[0].children[0].insert(1, "yo")
    return base, client.get_update(before)


def hostile_corpus(seed: int = 12, count: int = 1500) -> list[bytes]:
    rng = random.Random(seed)
    _, good = rich_history()
    corpus = [
        b"", b"\x00", b"\x01", b"\xff", b"\x00\x00\x00",
        b"\x01" + b"\xff" * 20,  # a varuint that never ends
        b"\x01\x01\x07\x00\x04\x01\x07content\xff\xff\xff\xff\x0fabc\x00",  # huge string length
        b"\x7f" + b"\x01" * 10,  # 127 clients claimed, 10 bytes given
        b"\x01\xff\xff\xff\xff\x0f\x07\x00",  # 4 billion structs claimed
        # deeply nested: an Any array inside an array, 10k levels
        b"\x01\x01\x07\x00\x08\x01\x01m\x01" + b"\x75\x01" * 10_000 + b"\x77\x00\x00",
    ]
    for cut in range(1, len(good)):  # every truncation
        corpus.append(good[:cut])
    for _ in range(count):
        data = bytearray(good)
        kind = rng.random()
        if kind < 0.5:  # corrupted bytes (varints included)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind < 0.75:  # a varuint blown up to a huge length prefix
            at = rng.randrange(len(data))
            data[at:at] = bytes([0xFF] * rng.randint(1, 9)) + bytes([rng.randrange(128)])
        else:  # random bytes
            data = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 60)))
        corpus.append(bytes(data))
    return corpus


def test_hostile_updates_raise_only_invalid_input_and_change_nothing():
    base, good = rich_history()
    doc = LiveDocument.load(base)
    state, vector, content = doc.snapshot(), doc.state_vector(), doc.content
    outcomes = {"refused": 0, "accepted": 0}
    for data in hostile_corpus():
        try:
            relayed = doc.apply(data)
        except InvalidInput:
            outcomes["refused"] += 1
            assert doc.snapshot() == state and doc.content == content, data.hex()
            continue
        # some corruptions are still valid updates: accepted, then start over
        outcomes["accepted"] += 1
        if relayed is not None:
            doc = LiveDocument.load(base)
        assert doc.snapshot() == state
    assert outcomes["refused"] > 1000, outcomes
    assert doc.state_vector() == vector
    # and the document still works
    assert doc.apply(good) is not None
    assert "中文" in doc.content


def test_updates_that_fail_half_way_through_integration_are_rolled_back():
    # Yrs leaves the first part of these in the document before raising (measured:
    # "block parent ... must be deleted or shared ref type")
    base, good = rich_history()
    found = 0
    rng = random.Random(3)
    for _ in range(20_000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
        probe = pycrdt.Doc(client_id=99)
        probe.apply_update(base)
        before = probe.get_update()
        try:
            probe.apply_update(data)
        except Exception:
            if probe.get_update() != before:
                found += 1
                doc = LiveDocument.load(base)
                state = doc.snapshot()
                with pytest.raises(InvalidInput):
                    doc.apply(data)
                assert doc.snapshot() == state
                assert doc.apply(good) is not None
                if found == 3:
                    break
    assert found > 0, "no partially applied update in the corpus any more"


def test_a_panic_mid_apply_is_invalid_input_and_rolled_back(monkeypatch):
    doc = LiveDocument.new("keep me")
    state = doc.snapshot()
    client, text = pydoc(71)
    client.apply_update(state)
    sneaky = edit(client, lambda: text.insert(0, "half applied "))
    panic = panic_exception()
    real_apply = pycrdt.Doc.apply_update

    calls = []

    def apply_then_panic(self, update):
        calls.append(update)
        if len(calls) > 1:  # the rollback's rebuild
            return real_apply(self, update)
        real_apply(self, sneaky)  # part of the document changes, then Rust panics
        raise panic

    monkeypatch.setattr(pycrdt.Doc, "apply_update", apply_then_panic)
    with pytest.raises(InvalidInput):
        doc.apply(b"\x00\x00")
    monkeypatch.undo()
    assert doc.snapshot() == state and doc.content == "keep me"
    assert doc.replace_content("keep me too") is not None


def test_a_panic_in_diff_is_invalid_input(monkeypatch):
    doc = LiveDocument.new("x")
    panic = panic_exception()

    def panicking(self, state=None):
        raise panic

    monkeypatch.setattr(pycrdt.Doc, "get_update", panicking)
    with pytest.raises(InvalidInput):
        doc.diff(b"\x00")


def test_stored_state_that_does_not_decode_is_a_value_error():
    with pytest.raises(ValueError):
        LiveDocument.load(b"\x01\x02garbage")


# -- limits ------------------------------------------------------------------------------

def typed_update(prefix: str, added: str) -> tuple[bytes, bytes]:
    """(base with ``prefix``, an update appending ``added``) from one client."""
    client, text = pydoc(81)
    base = edit(client, lambda: text.insert(0, prefix))
    return base, edit(client, lambda: text.insert(len(text), added))


@pytest.mark.parametrize("added", ["x", "é", "😀", "中"])
def test_content_limit_counts_utf8_bytes_exactly_at_the_boundary(added):
    base, update = typed_update("abc", added)
    size = 3 + len(added.encode())
    at_limit = LiveDocument.load(base, max_content_bytes=size)
    assert at_limit.apply(update) is not None
    assert at_limit.content_bytes == size
    over = LiveDocument.load(base, max_content_bytes=size - 1)
    state = over.snapshot()
    with pytest.raises(PayloadTooLarge) as refused:
        over.apply(update)
    assert refused.value.details == {"limit": size - 1}
    assert over.snapshot() == state and over.content == "abc"


def test_replace_content_limit_is_exact():
    doc = LiveDocument.new("ab", max_content_bytes=6)
    assert doc.replace_content("ab😀") is not None  # 6 bytes
    with pytest.raises(PayloadTooLarge):
        doc.replace_content("ab😀!")  # 7
    assert doc.content == "ab😀"
    with pytest.raises(PayloadTooLarge):
        LiveDocument.new("x" * 7, max_content_bytes=6)


def test_a_document_over_a_lowered_content_limit_may_still_shrink():
    stored = LiveDocument.new("0123456789").snapshot()
    doc = LiveDocument.load(stored, max_content_bytes=5)
    assert doc.replace_content("012345678") is not None
    with pytest.raises(PayloadTooLarge):
        doc.replace_content("0123456789!")
    assert doc.content == "012345678"


def test_state_limit_is_exact_at_the_boundary():
    base, update = typed_update("abc", "defgh")
    reference = LiveDocument.load(base)
    reference.apply(update)
    exact = reference.state_size
    at_limit = LiveDocument.load(base, max_state_bytes=exact)
    assert at_limit.apply(update) is not None and at_limit.state_size == exact
    over = LiveDocument.load(base, max_state_bytes=exact - 1)
    state = over.snapshot()
    with pytest.raises(PayloadTooLarge) as refused:
        over.apply(update)
    assert refused.value.details == {"limit": exact - 1}
    assert over.snapshot() == state
    small = LiveDocument.new("abc", max_state_bytes=LiveDocument.new("abc").state_size + 5)
    with pytest.raises(PayloadTooLarge):
        small.replace_content("abc and a good deal more text than five bytes")
    assert small.content == "abc"


def test_state_limit_holds_over_many_small_updates():
    # the running bound must trigger exact measurements, not let the state creep past
    doc = LiveDocument.new(max_state_bytes=4096)
    client, text = pydoc(91)
    accepted = 0
    with pytest.raises(PayloadTooLarge):
        for i in range(10_000):
            doc.apply(edit(client, lambda i=i: text.insert(len(text), f"{i % 10}")))
            accepted += 1
    assert doc.state_size <= 4096 < doc.state_size + 64
    assert accepted > 100


@pytest.mark.parametrize("writer", [1, 2**32 - 1, 2**53 - 1])
def test_state_growth_per_update_byte_stays_under_the_bound(writer):
    # the worst case measured: deleting every other character splits every item
    author, text = pydoc(writer)
    base = edit(author, lambda: text.insert(0, "x" * 400))
    editor, etext = pydoc(5)
    editor.apply_update(base)

    def every_other():
        for i in range(398, 0, -2):
            del etext[i:i + 1]

    update = edit(editor, every_other)
    doc = LiveDocument.load(base)
    before = doc.state_size
    doc.apply(update)
    growth = (doc.state_size - before) / len(update)
    assert 2 < growth < STATE_GROWTH_PER_UPDATE_BYTE


# -- the v1 bridge ------------------------------------------------------------------------

@pytest.mark.parametrize("old,new", [
    ("", "😀"), ("😀", ""), ("a😀b", "a😀😀b"), ("a😀b", "ab"), ("a😀b", "a😁b"),
    ("e\u0301", "e\u0302"), ("e\u0301x", "ex"), ("中文", "中日文"),
    ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧\u200d👦"), ("👍🏽", "👍🏿"),
    ("mixed é 😀 中", "mixed é 中 😀"), ("\U00010348x\U00010348", "\U00010348\U00010348"),
    ("aaaa", "aaaaa"), ("abcabc", "abc"), ("same", "same"),
])
def test_replace_content_is_exact_and_minimal(old, new):
    doc = LiveDocument.new(old)
    before = doc.snapshot()
    update = doc.replace_content(new)
    assert doc.content == new
    if old == new:
        assert update is None and doc.snapshot() == before
        return
    peer, text = pydoc(101)
    peer.apply_update(before)
    peer.apply_update(update)
    assert str(text) == new
    # smallest edit: only what changed is inserted
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    assert len(update) < 40 + len(new[start:].encode())


def test_replace_content_keeps_a_concurrent_edit_in_the_unchanged_part():
    doc = LiveDocument.new("The quick brown fox")
    client, text = pydoc(111)
    client.apply_update(doc.snapshot())
    concurrent = edit(client, lambda: text.insert(0, ">> "))
    doc.replace_content("The quick red fox")
    doc.apply(concurrent)
    assert doc.content == ">> The quick red fox"


def test_replace_content_refuses_non_text():
    doc = LiveDocument.new("x")
    with pytest.raises(InvalidInput):
        doc.replace_content("lone \ud800 surrogate")
    with pytest.raises(InvalidInput):
        doc.replace_content(b"bytes")  # type: ignore[arg-type]
    assert doc.content == "x"


def test_two_copies_of_one_document_never_share_a_client_id():
    stored = LiveDocument.new("base").snapshot()
    one, two = LiveDocument.load(stored), LiveDocument.load(stored)
    assert one.client_id != two.client_id
    assert one.client_id not in read_state_vector(LiveDocument.load(stored).state_vector())
    u1, u2 = one.replace_content("base one"), two.replace_content("two base")
    one.apply(u2)
    two.apply(u1)
    assert one.content == two.content == "two base one"


def test_snapshot_compaction_keeps_rollback_working():
    # many accepted updates fold the rollback log into new baselines; a refusal after
    # that still restores exactly the last accepted state
    doc = LiveDocument.new()
    client, text = pydoc(121)
    for i in range(3000):
        doc.apply(edit(client, lambda i=i: text.insert(len(text), f"line {i}\n")))
    state = doc.snapshot()
    _, bad = rich_history()
    with pytest.raises(InvalidInput):
        doc.apply(bad)  # depends on a client this document has never seen
    assert doc.snapshot() == state
    assert doc.content == str(text)


# -- against real Yjs ---------------------------------------------------------------------

@pytest.mark.parametrize("content", UNICODE_CASES)
def test_python_made_content_reads_the_same_in_yjs(yjs, content):
    doc = LiveDocument.new(content)
    yjs.call("new", doc="reader")
    seen = yjs.call("apply", doc="reader", update=doc.snapshot())
    assert seen["text"] == content
    assert seen["utf16_length"] == len(content.encode("utf-16-le")) // 2


@pytest.mark.parametrize("content", UNICODE_CASES)
def test_replacements_reach_yjs_exactly(yjs, content):
    doc = LiveDocument.new("start")
    yjs.call("new", doc="bridge")
    yjs.call("apply", doc="bridge", update=doc.snapshot())
    for step in (content, content + " 😀 end", "前 " + content, content[::-1], ""):
        if not _is_clean(step):
            continue
        update = doc.replace_content(step)
        if update is not None:
            assert yjs.call("apply", doc="bridge", update=update)["text"] == step
        assert doc.content == step


def _is_clean(text: str) -> bool:
    # reversing a string can put a combining mark first; that is still text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf16_index(text: str, code_points: int) -> int:
    return len(text[:code_points].encode("utf-16-le")) // 2


@pytest.mark.parametrize("content", UNICODE_CASES)
def test_yjs_edits_at_utf16_positions_apply_exactly(yjs, content):
    doc = LiveDocument.new(content)
    name = f"editor-{abs(hash(content))}"
    yjs.call("new", doc=name, client_id=1000 + len(content))
    yjs.call("apply", doc=name, update=doc.snapshot())
    expected = content
    rng = random.Random(content)
    for _ in range(12):
        # code-point positions: Yjs never splits a surrogate pair (a split is refused below)
        at = rng.randint(0, len(expected))
        if rng.random() < 0.6 or not expected:
            piece = rng.choice(["x", "😀", "é", "中", "e\u0301", "👨\u200d👩", "🇫🇷"])
            answer = yjs.call("insert", doc=name, index=utf16_index(expected, at), text=piece)
            expected = expected[:at] + piece + expected[at:]
        else:
            length = rng.randint(1, min(3, len(expected) - at) or 1)
            length = min(length, len(expected) - at)
            if length == 0:
                continue
            start, stop = utf16_index(expected, at), utf16_index(expected, at + length)
            answer = yjs.call("delete", doc=name, index=start, length=stop - start)
            expected = expected[:at] + expected[at + length:]
        assert answer["text"] == expected
        assert doc.apply(answer["update"]) is not None
        assert doc.content == expected
    # and the server's state reads back identically in a fresh Yjs doc
    yjs.call("new", doc=name + "-fresh")
    assert yjs.call("apply", doc=name + "-fresh", update=doc.snapshot())["text"] == expected


def test_insert_right_beside_surrogate_pairs_from_both_sides(yjs):
    content = "😀😀"
    doc = LiveDocument.new(content)
    yjs.call("new", doc="beside", client_id=2000)
    yjs.call("apply", doc="beside", update=doc.snapshot())
    for utf16, expected in ((2, "😀|😀"), (0, "|😀|😀"), (6, "|😀|😀|")):
        answer = yjs.call("insert", doc="beside", index=utf16, text="|")
        doc.apply(answer["update"])
        assert doc.content == answer["text"] == expected
    update = doc.replace_content("|😀+😀|")  # Python side, between the pairs
    assert yjs.call("apply", doc="beside", update=update)["text"] == "|😀+😀|"


def test_concurrent_yjs_edit_and_v1_replacement_converge(yjs):
    doc = LiveDocument.new("Hello 😀 world")
    yjs.call("new", doc="live", client_id=3000)
    yjs.call("apply", doc="live", update=doc.snapshot())
    typed = yjs.call("insert", doc="live", index=utf16_index("Hello 😀 world", 8), text="big ")
    replaced = doc.replace_content("Hello 😀 world!!")  # concurrently, a v1 client
    doc.apply(typed["update"])
    final = yjs.call("apply", doc="live", update=replaced)["text"]
    assert final == doc.content == "Hello 😀 big world!!"


def test_sync_with_yjs_by_state_vectors(yjs):
    doc = LiveDocument.new("server side 中")
    yjs.call("new", doc="offline", client_id=4000)
    offline = yjs.call("insert", doc="offline", index=0, text="offline 😀 ")
    assert offline["update"]
    # sync step 1/2 both ways, as a live join does
    theirs = yjs.call("state_vector", doc="offline")["state_vector"]
    yjs.call("apply", doc="offline", update=doc.diff(theirs))
    lacking = yjs.call("diff", doc="offline", state_vector=doc.state_vector())["update"]
    assert doc.apply(lacking) is not None
    assert yjs.call("text", doc="offline")["text"] == doc.content
    assert set(doc.content.split()) == {"offline", "😀", "server", "side", "中"}


# -- surrogate pairs: updates that split one are refused ------------------------------------

def test_high_units_are_utf16_offsets_and_the_byte_scan_finds_every_pair():
    assert high_units("a😀b\U00010348") == [1, 4]
    assert high_units("é中 plain") == [] and high_units("") == []
    assert high_units("👨\u200d👩") == [0, 3]
    for text in ("😀", "x\U00010348", "🇫🇷"):
        assert may_hold_pairs(text.encode())
    assert not may_hold_pairs("é中 plain".encode())


def yjs_beside(yjs, name: str, doc: LiveDocument, client_id: int) -> None:
    """A Yjs client named ``name`` holding ``doc``'s state."""
    yjs.call("new", doc=name, client_id=client_id)
    yjs.call("apply", doc=name, update=doc.snapshot())


def assert_refused_unchanged(doc: LiveDocument, update: bytes, yjs, name: str) -> None:
    """``update`` is refused, the document is as it was, and a normal edit still works."""
    state, content = doc.snapshot(), doc.content
    with pytest.raises(InvalidInput, match="surrogate pair"):
        doc.apply(update)
    assert doc.snapshot() == state and doc.content == content
    yjs_beside(yjs, name + "-after", doc, 9000 + len(name))
    fine = yjs.call("insert", doc=name + "-after", index=len(content.encode("utf-16-le")) // 2,
                    text="!😀")
    assert doc.apply(fine["update"]) is not None
    assert doc.content == fine["text"] == content + "!😀"


# units of "a😀b" written by one client: a = clock 0, the emoji's high half 1, low half 2, b 3
SPLITS = {
    "insert between the halves": ("insert", {"index": 2, "text": "X"}),
    "delete the high half": ("delete", {"index": 1, "length": 1}),
    "delete the low half": ("delete", {"index": 2, "length": 1}),
    "delete up to the high half": ("delete", {"index": 0, "length": 2}),
    "delete from the low half on": ("delete", {"index": 2, "length": 2}),
    "origin at the high half only": ("raw_insert", {"origin": 1, "right_origin": 3, "text": "X"}),
    "right origin at the low half only": ("raw_insert", {"origin": 0, "right_origin": 2,
                                                         "text": "X"}),
}


@pytest.mark.parametrize("case", SPLITS)
def test_yjs_edits_inside_a_surrogate_pair_are_refused(yjs, case):
    # Yjs turns both halves into U+FFFD; Yrs would keep the character and misplace the
    # edit, so the server's copy would differ from every JavaScript client's: refused
    doc = LiveDocument.new("a😀b")
    name = f"split-{list(SPLITS).index(case)}"
    yjs_beside(yjs, name, doc, 5000)
    op, fields = SPLITS[case]
    if op == "raw_insert":  # a hostile client's item, with origins of its choosing
        fields = {**fields, "origin": [doc.client_id, fields["origin"]],
                  "right_origin": [doc.client_id, fields["right_origin"]]}
    answer = yjs.call(op, doc=name, **fields)
    assert "\ufffd" in answer["text"]  # what Yjs made of it
    assert_refused_unchanged(doc, answer["update"], yjs, name)


def test_before_the_fix_yrs_and_yjs_disagreed_about_a_split_pair(yjs):
    # the divergence the refusal prevents, on pycrdt itself (no LiveDocument)
    doc = LiveDocument.new("a😀b")
    yjs_beside(yjs, "diverge", doc, 5001)
    answer = yjs.call("insert", doc="diverge", index=2, text="X")
    raw, text = pydoc(5002)
    raw.apply_update(doc.snapshot())
    raw.apply_update(answer["update"])
    assert answer["text"] == "a\ufffdX\ufffdb" and str(text) == "a😀Xb"
    yjs.call("new", doc="diverge-fresh")  # and Yrs's state reads differently again in Yjs
    fresh = yjs.call("apply", doc="diverge-fresh", update=raw.get_update())
    assert fresh["text"] == "a\ufffdXb\ufffd"


@pytest.mark.parametrize("second", [
    {"op": "insert", "index": 2, "text": "X"},
    {"op": "delete", "index": 1, "length": 1},
    {"op": "delete", "index": 2, "length": 1},
])
@pytest.mark.parametrize("same_client", [True, False])
def test_a_split_in_the_same_update_as_the_pair_is_refused(yjs, second, same_client):
    # the emoji and the edit inside it in one (merged) update: the pair is in the update
    doc = LiveDocument.new("start ")
    yjs_beside(yjs, "author", doc, 5100)
    first = yjs.call("insert", doc="author", index=6, text="a😀b")["update"]
    editor = "author"
    if not same_client:
        yjs_beside(yjs, "other", doc, 5101)
        yjs.call("apply", doc="other", update=first)
        editor = "other"
    index = 6 + second["index"]
    if second["op"] == "insert":
        split = yjs.call("insert", doc=editor, index=index, text=second["text"])
    else:
        split = yjs.call("delete", doc=editor, index=index, length=second["length"])
    assert "\ufffd" in split["text"]
    merged = yjs.call("merge", updates=[first, split["update"]])["update"]
    yjs_beside(yjs, "merged-reader", doc, 5102)  # Yjs reading it splits the pair too
    assert "\ufffd" in yjs.call("apply", doc="merged-reader", update=merged)["text"]
    assert_refused_unchanged(doc, merged, yjs, f"merged-{same_client}-{second['index']}")


def test_a_split_made_within_one_yjs_transaction_is_no_pair_and_is_accepted(yjs):
    # inside one transaction Yjs splits its own new item before encoding it: the update
    # carries U+FFFD, not a pair, and every copy agrees on that
    doc = LiveDocument.new("")
    yjs_beside(yjs, "one-transaction", doc, 5200)
    answer = yjs.call("transact", doc="one-transaction", steps=[
        {"op": "insert", "index": 0, "text": "a😀b"}, {"op": "insert", "index": 2, "text": "X"}])
    assert answer["text"] == "a\ufffdX\ufffdb"
    assert doc.apply(answer["update"]) is not None
    assert doc.content == answer["text"]


def test_an_item_cut_inside_its_own_pair_is_refused(yjs):
    # a client re-sends clocks the document has with other text: the known part is cut
    # off the new string, here between the halves of its emoji
    doc = LiveDocument.new("")
    for name in ("first-writer", "second-writer"):
        yjs.call("new", doc=name, client_id=5300)  # one client id, two writers (hostile)
    known = yjs.call("insert", doc="first-writer", index=0, text="ab")["update"]
    assert doc.apply(known) is not None
    clash = yjs.call("insert", doc="second-writer", index=0, text="a😀b")["update"]
    assert_refused_unchanged(doc, clash, yjs, "cut")


def test_naming_the_inside_of_a_deleted_character_is_accepted_and_converges(yjs):
    # deleted text is gone from both sides (Yrs and Yjs keep only its length), so an
    # update naming the inside of a deleted emoji changes no text anywhere
    doc = LiveDocument.new("a😀b")
    server_id = doc.client_id
    doc.replace_content("ab")
    yjs_beside(yjs, "deleted", doc, 5400)
    answer = yjs.call("raw_insert", doc="deleted", origin=[server_id, 1],
                      right_origin=[server_id, 2], text="X")
    assert doc.apply(answer["update"]) is not None
    assert doc.content == answer["text"] == "aXb"
    yjs.call("new", doc="deleted-fresh")
    assert yjs.call("apply", doc="deleted-fresh", update=doc.snapshot())["text"] == "aXb"


def test_edits_next_to_pairs_in_every_shared_type_are_accepted(yjs):
    # the check covers every string (XmlText too) and refuses nothing normal
    doc = LiveDocument.new("😀")
    yjs_beside(yjs, "rich", doc, 5500)
    for scenario in ("xml", "format", "nested", "text"):
        update = yjs.call("scenario", doc="rich", name=scenario)["update"]
        assert doc.apply(update) is not None
    for index in (0, 2, 4):
        answer = yjs.call("insert", doc="rich", index=index, text="😀")
        assert doc.apply(answer["update"]) is not None
    assert doc.content == yjs.call("text", doc="rich")["text"]
    yjs.call("new", doc="rich-fresh")
    assert yjs.call("apply", doc="rich-fresh", update=doc.snapshot())["text"] == doc.content


def test_deeply_nested_values_are_refused_before_pycrdt_reads_them(tmp_path):
    # Yrs reads nested values recursively: 50,000 levels crash the process (SIGSEGV), so
    # this runs in a child process; the update is refused before pycrdt sees it
    script = tmp_path / "deep.py"
    script.write_text(
        "from collab.errors import InvalidInput\n"
        "from collab.ydoc import LiveDocument\n"
        "deep = b'\\x01\\x01\\x07\\x00\\x08\\x01\\x01m\\x01' + b'\\x75\\x01' * 50_000"
        " + b'\\x77\\x00\\x00'\n"
        "doc = LiveDocument.new('x')\n"
        "try:\n"
        "    doc.apply(deep)\n"
        "except InvalidInput as exc:\n"
        "    print('refused:', exc.message)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "refused: update cannot be decoded: values nested deeper than" in done.stdout


@pytest.mark.parametrize("type_ref", [b"\x09", b"\x0f"])
def test_updates_yrs_takes_but_yjs_cannot_read_are_refused(type_ref):
    # Yrs takes these type refs (a sub-document, "undefined"); Yjs throws on them, so
    # every JavaScript client would fail to load the document once it held one
    update = b"\x01\x01\x01\x00\x07\x01\x01m" + type_ref + b"\x00"
    pycrdt.Doc().apply_update(update)
    doc = LiveDocument.new("x")
    with pytest.raises(InvalidInput, match="unknown type ref"):
        doc.apply(update)
    assert doc.content == "x"


def test_a_stored_state_yjs_cannot_read_still_loads_and_takes_edits(caplog):
    # stored before updates were read the Yjs way: no surrogate check for what is in it
    # (no Yjs client can load it to disagree), later edits are checked and kept
    legacy = (b"\x01\x02\x01\x00" + b"\x04\x01\x07content\x04" + "😀".encode()
              + b"\x07\x01\x01m\x0f" + b"\x00")  # "😀" in content, then the type ref
    doc = LiveDocument.load(legacy)
    assert doc.content == "😀"
    client, text = pydoc(5700)
    client.apply_update(doc.snapshot())
    with caplog.at_level("WARNING", logger="collab.ydoc"):
        assert doc.apply(edit(client, lambda: text.insert(4, "a😀b"))) is not None
    assert "not one Yjs can read" in caplog.text
    assert [(i.client, i.clock) for i in doc._surrogate_index()] == [(5700, 1)]
    assert doc.content == "😀a😀b"


def test_the_surrogate_index_follows_changes_exactly(yjs):
    # the index kept up to date change by change equals one built from the state afresh
    doc = LiveDocument.new("😀 start 𐍈")
    yjs_beside(yjs, "follow", doc, 5600)
    rng = random.Random(5)
    expected = doc.content
    for step in range(60):
        at = rng.randint(0, len(expected))
        if rng.random() < 0.55 or not expected:
            piece = rng.choice(["😀", "x😀y", "é", "𐍈𐍈", "ab"])
            answer = yjs.call("insert", doc="follow", index=utf16_index(expected, at), text=piece)
            expected = expected[:at] + piece + expected[at:]
        elif step % 7 == 0:  # the v1 bridge, deleting and inserting pairs itself
            expected = expected[:at] + "🇫🇷" + expected[at + 2:]
            update = doc.replace_content(expected)
            if update is not None:
                assert yjs.call("apply", doc="follow", update=update)["text"] == expected
            continue
        else:
            length = min(rng.randint(1, 3), len(expected) - at)
            if length == 0:
                continue
            start, stop = utf16_index(expected, at), utf16_index(expected, at + length)
            answer = yjs.call("delete", doc="follow", index=start, length=stop - start)
            expected = expected[:at] + expected[at + length:]
        assert doc.apply(answer["update"]) is not None and doc.content == expected
        followed = list(doc._surrogate_index())
        assert followed == list(SurrogateIndex.of(decode_update(doc.snapshot())))
    assert len(followed) == sum(1 for c in expected if ord(c) > 0xFFFF)
    # a nested Y.Text with a pair, then its map entry replaced: its text is deleted too
    for scenario in ("nested", "unnest"):
        before = len(list(doc._surrogate_index()))
        assert doc.apply(yjs.call("scenario", doc="follow", name=scenario)["update"]) is not None
        followed = list(doc._surrogate_index())
        assert len(followed) == before + (1 if scenario == "nested" else -1)
        assert followed == list(SurrogateIndex.of(decode_update(doc.snapshot())))


# -- how deep shared types nest (collab/typedepth.py) -------------------------------

def run_child(code: str, tmp_path: Path, stack_bytes: int = 8 * 1024 * 1024,
              ) -> subprocess.CompletedProcess:
    """Run ``code`` in a child process whose main thread has ``stack_bytes`` of stack
    (Linux's usual 8 MB unless given): a crash kills the child, never the test run.
    (Linux checks the limit as the stack grows, so the child sets it itself.)"""
    script = tmp_path / "child.py"
    script.write_text(
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_STACK)[1]\n"
        f"size = {stack_bytes} if hard == resource.RLIM_INFINITY else min({stack_bytes}, hard)\n"
        "resource.setrlimit(resource.RLIMIT_STACK, (size, hard))\n" + code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})


def test_before_the_bound_a_deep_chain_deleted_crashed_yrs(tmp_path):
    # what the bound is for, measured on pycrdt itself: deleting the root of 60,000
    # nested arrays overflows an 8 MB stack (SIGSEGV); 30,000 survive
    for depth, survives in ((30_000, True), (60_000, False)):
        done = run_child("import pycrdt\n"
                         "from harness import DELETE_FIRST, nested_arrays\n"
                         "doc = pycrdt.Doc()\n"
                         f"doc.apply_update(nested_arrays({depth}))\n"
                         "doc.apply_update(DELETE_FIRST)\n", tmp_path)
        assert (done.returncode == 0) is survives, (depth, done.returncode, done.stderr[-500:])
        if not survives:
            assert done.returncode == -signal.SIGSEGV


def test_the_crash_reproduction_is_refused_and_the_process_survives(tmp_path):
    done = run_child(
        "from harness import DELETE_FIRST, nested_arrays\n"
        "from collab.errors import CollabError\n"
        "from collab.ydoc import LiveDocument\n"
        "doc = LiveDocument.new('x')\n"
        "for update in (nested_arrays(60_000), DELETE_FIRST):\n"
        "    try:\n"
        "        doc.apply(update)\n"
        "    except CollabError as exc:\n"
        "        print('refused:', exc.code.value, exc.message, exc.details)\n"
        "from collab.lib0 import read_state_vector\n"
        "print('content:', doc.content, list(read_state_vector(doc.state_vector()))"
        " == [doc.client_id])\n", tmp_path)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[0] == (f"refused: PAYLOAD_TOO_LARGE Shared type nesting exceeds the limit "
                        f"of {MAX_TYPE_DEPTH} {{'limit': {MAX_TYPE_DEPTH}}}")
    # nothing of the chain was applied, so the deletion names items the document lacks
    assert lines[1].startswith("refused: INVALID_INPUT update depends on changes")
    assert lines[2] == "content: x True"  # only the document's own first edit is in it


def test_a_chain_at_the_limit_works_everywhere_even_on_a_1_mb_stack(tmp_path):
    # the deepest chain the bound lets through, then everything done with it: deleted
    # (the recursion), encoded, diffed, stored and loaded; on an eighth of the usual stack
    done = run_child(
        "from harness import DELETE_FIRST, nested_arrays\n"
        "from collab.ydoc import LiveDocument\n"
        "from collab.typedepth import MAX_TYPE_DEPTH\n"
        "doc = LiveDocument.new('x')\n"
        "assert doc.apply(nested_arrays(MAX_TYPE_DEPTH)) is not None\n"
        "stored = doc.snapshot()\n"
        "copy = LiveDocument.load(stored)\n"
        "assert copy.diff(b'') and copy.diff(LiveDocument.new('x').state_vector())\n"
        "assert doc.apply(DELETE_FIRST) is not None\n"
        "assert copy.apply(DELETE_FIRST) is not None\n"
        "again = LiveDocument.load(stored, [DELETE_FIRST])\n"
        "assert again.snapshot() == copy.snapshot() and again.content == 'x'\n"
        "print('ok', len(stored))\n", tmp_path, stack_bytes=1024 * 1024)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("ok")


def test_a_chain_one_over_the_limit_is_refused_and_nothing_applied():
    doc = LiveDocument.new("x")
    before = doc.snapshot()
    with pytest.raises(PayloadTooLarge) as refused:
        doc.apply(nested_arrays(MAX_TYPE_DEPTH + 1))
    assert refused.value.details == {"limit": MAX_TYPE_DEPTH}
    assert doc.snapshot() == before
    assert doc.apply(nested_arrays(MAX_TYPE_DEPTH)) is not None
    with pytest.raises(PayloadTooLarge):  # one more level, in a second update
        doc.apply(nested_arrays(1, clock=MAX_TYPE_DEPTH, parent=(1, MAX_TYPE_DEPTH - 1)))
    assert doc.apply(DELETE_FIRST) is not None
    assert doc.content == "x"


def test_a_chain_built_over_many_updates_is_refused_at_the_limit():
    doc = LiveDocument.new("x")
    for clock in range(MAX_TYPE_DEPTH):
        parent = (1, clock - 1) if clock else "chain"
        assert doc.apply(nested_arrays(1, clock=clock, parent=parent)) is not None
    state = doc.snapshot()
    for client, parent in ((1, (1, MAX_TYPE_DEPTH - 1)), (2, (1, MAX_TYPE_DEPTH - 1))):
        with pytest.raises(PayloadTooLarge):
            doc.apply(nested_arrays(1, client=client, clock=MAX_TYPE_DEPTH if client == 1
                                    else 0, parent=parent))
        assert doc.snapshot() == state
    # the same document loaded from the store knows its depths as well
    for loaded in (LiveDocument.load(state), LiveDocument.load(None, [state])):
        with pytest.raises(PayloadTooLarge):
            loaded.apply(nested_arrays(1, clock=MAX_TYPE_DEPTH, parent=(1, MAX_TYPE_DEPTH - 1)))
        assert loaded.apply(DELETE_FIRST) is not None


def test_items_placed_by_their_origins_nest_where_those_live():
    # no parent written out: an item goes where its origin (or right origin) lives, so a
    # chain can hide its parents behind origins; the bound still sees the depth
    deepest = (1, MAX_TYPE_DEPTH - 1)  # a type at the limit
    doc = LiveDocument.new("x")
    doc.apply(nested_arrays(MAX_TYPE_DEPTH))
    # beside the deepest type (origin, right origin): at the limit too, accepted
    assert doc.apply(y_update(2, 0, [y_item(origin=deepest)])) is not None
    assert doc.apply(y_update(2, 1, [y_item(right_origin=deepest)])) is not None
    # a string inside the deepest type, then a type after it: one level too deep
    assert doc.apply(y_update(3, 0, [y_item(parent=deepest, text="a")])) is not None
    state = doc.snapshot()
    for hostile in (y_update(3, 1, [y_item(origin=(3, 0))]),
                    y_update(3, 1, [y_item(right_origin=(3, 0))]),
                    y_update(3, 1, [y_item(parent=(2, 0))]),  # inside the sibling type
                    # origin in the root type, right origin at the limit: the deeper counts
                    y_update(3, 1, [y_item(origin=(1, 0), right_origin=(3, 0))])):
        with pytest.raises(PayloadTooLarge):
            doc.apply(hostile)
        assert doc.snapshot() == state
    assert doc.apply(y_update(3, 1, [y_item(origin=(3, 0), text="b")])) is not None


def test_an_update_naming_its_own_items_in_any_order_or_in_a_cycle():
    # the chain written as two clients taking turns, each naming the other's last item:
    # placed whatever order the update lists them in
    items = {1: [], 2: []}
    for level in range(MAX_TYPE_DEPTH + 1):
        client = 1 + level % 2
        parent = "chain" if level == 0 else (2 - level % 2, (level - 1) // 2)
        items[client].append(y_item(parent=parent))
    both = (b"\x02" + b"".join(var_uint(len(items[c])) + var_uint(c) + b"\x00"
                               + b"".join(items[c]) for c in (2, 1)) + b"\x00")
    decoded = decode_update(both)
    assert TypeDepths().place(decoded).deepest == MAX_TYPE_DEPTH + 1
    doc = LiveDocument.new("x")
    with pytest.raises(PayloadTooLarge):
        doc.apply(both)
    # two types, each inside the other: a cycle Yrs cannot integrate (pending), refused
    cycle = (b"\x02\x01\x01\x00" + y_item(parent=(2, 0)) + b"\x01\x02\x00"
             + y_item(parent=(1, 0)) + b"\x00")
    with pytest.raises(InvalidInput, match="depends on changes"):
        doc.apply(cycle)
    assert doc.content == "x"


def test_a_document_stored_deeper_than_the_limit_loads_and_takes_no_change(tmp_path):
    # stored before the bound: readable, but any change might delete the deep type
    done = run_child(
        "from harness import DELETE_FIRST, nested_arrays\n"
        "from collab.errors import PayloadTooLarge\n"
        "from collab.ydoc import LiveDocument\n"
        "doc = LiveDocument.new('x')\n"
        "doc._doc.apply_update(nested_arrays(40_000))  # (the way it used to be stored)\n"
        "stored = doc.snapshot()\n"
        "legacy = LiveDocument.load(stored)\n"
        "print(legacy.content, legacy.diff(b'') == stored)\n"
        "for change in (lambda: legacy.apply(DELETE_FIRST),\n"
        "               lambda: legacy.replace_content('y')):\n"
        "    try:\n"
        "        change()\n"
        "    except PayloadTooLarge as exc:\n"
        "        print('refused:', exc.message)\n"
        "print(legacy.snapshot() == stored)\n", tmp_path)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.splitlines() == [
        "x True", *[f"refused: Shared type nesting exceeds the limit of {MAX_TYPE_DEPTH}"] * 2,
        "True"]


def realistic_edits(doc: LiveDocument, seed: int, steps: int) -> pycrdt.Doc:
    """ProseMirror-like edits from two pycrdt clients (paragraphs, lists in lists,
    typing, deletions, a map of metadata), each applied to ``doc``; the first client."""
    rng = random.Random(seed)
    clients = [pycrdt.Doc(client_id=7100 + n) for n in range(2)]
    for client in clients:
        client.apply_update(doc.snapshot())
    for step in range(steps):
        client = clients[step % 2]
        client.apply_update(doc.snapshot())
        fragment = client.get("prosemirror", type=pycrdt.XmlFragment)
        before = client.get_state()
        with client.transaction():
            blocks = list(fragment.children)
            roll = rng.random()
            if not blocks or roll < 0.2:
                paragraph = pycrdt.XmlElement("paragraph", {}, [pycrdt.XmlText("new ")])
                fragment.children.insert(rng.randint(0, len(blocks)), paragraph)
            elif roll < 0.4:  # a list nested a few levels, an item of text at the bottom
                inner = pycrdt.XmlElement("list_item", {}, [pycrdt.XmlElement(
                    "paragraph", {}, [pycrdt.XmlText("item")])])
                for _ in range(rng.randint(1, 4)):
                    inner = pycrdt.XmlElement("bullet_list", {}, [inner])
                fragment.children.insert(rng.randint(0, len(blocks)), inner)
            elif roll < 0.55 and len(blocks) > 1:
                del fragment.children[rng.randrange(len(blocks))]
            elif roll < 0.6:
                client.get("meta", type=pycrdt.Map)["title"] = f"title {step}"
            else:  # typing into the first text found in a random block
                node = blocks[rng.randrange(len(blocks))]
                while isinstance(node, pycrdt.XmlElement) and len(node.children):
                    node = node.children[0]
                if isinstance(node, pycrdt.XmlText):  # (at either end: pycrdt counts bytes)
                    node.insert(rng.choice([0, len(node)]), rng.choice(["a", "bc", "😀"]))
        doc.apply(client.get_update(before))
    return clients[0]


def test_the_depth_index_followed_change_by_change_agrees_with_one_built_afresh():
    doc = LiveDocument.new("start")
    realistic_edits(doc, seed=3, steps=150)
    doc.replace_content("changed")  # the v1 bridge's own items are followed too
    followed = doc._type_depths()
    fresh = TypeDepths.of(decode_update(doc.snapshot()))
    live = [s for s in decode_update(doc.snapshot()).structs if s.kind is not Kind.GC]
    assert len(live) > 100
    for struct in live:  # (GC ranges differ: the followed index keeps their old depth)
        for clock in (struct.clock, struct.clock + struct.length - 1):
            assert followed.depth_at(struct.client, clock) == \
                fresh.depth_at(struct.client, clock) is not None
    assert followed._ends == fresh._ends == read_state_vector(doc.state_vector())
    assert followed.deepest >= fresh.deepest >= 6  # fragment > lists > item > paragraph > text
    assert fresh.deepest <= 7
