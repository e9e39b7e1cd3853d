"""collab.yupdate: Yjs v1 updates read struct by struct, held against Yjs's own reading
(``Y.decodeUpdate`` in tests/js/yjs_peer.mjs) for every content kind real clients write.
"""

from __future__ import annotations

import pycrdt
import pytest

from collab.lib0 import Lib0Error, Reader, var_uint
from collab.yupdate import MAX_ANY_DEPTH, Kind, decode_update, utf16_length

#: scenarios in tests/js/yjs_peer.mjs, and the struct kinds each must contain
SCENARIOS = {
    "text": {Kind.STRING},
    "format": {Kind.FORMAT, Kind.STRING},
    "embed": {Kind.EMBED},
    "any": {Kind.ANY, Kind.BINARY},
    "json": {Kind.JSON},
    "binary": {Kind.BINARY},
    "xml": {Kind.TYPE, Kind.STRING, Kind.ANY},
    "hook": {Kind.TYPE},
    "nested": {Kind.TYPE, Kind.STRING},
    "subdoc": {Kind.DOC},
    "deleted": {Kind.STRING, Kind.DELETED},
    "gc": {Kind.GC, Kind.DELETED, Kind.ANY},
}

#: what Yrs 0.28 cannot read although Yjs writes it (pycrdt refuses these updates)
YRS_CANNOT_READ = {"json", "hook"}


def as_yjs_reads_it(data: bytes) -> dict:
    """collab.yupdate's reading of ``data`` in the shape of the peer's ``decode`` answer."""
    update = decode_update(data)

    def pair(id_):
        return None if id_ is None else [id_.client, id_.clock]

    def parent(written):  # a root type's name (Yjs reads it as a string) or an item id
        return written.decode() if isinstance(written, bytes) else pair(written)

    return {
        "structs": [{"kind": int(s.kind), "client": s.client, "clock": s.clock,
                     "length": s.length, "origin": pair(s.origin),
                     "right_origin": pair(s.right_origin), "text": s.text,
                     "parent": parent(s.parent)}
                    for s in update.structs],
        "deletes": [[d.client, d.clock, d.length] for d in update.deletes],
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_updates_yjs_writes_decode_as_yjs_reads_them(yjs, scenario):
    name = f"kinds-{scenario}"
    yjs.call("new", doc=name, client_id=2**40 + 7)  # a large client id too
    update = yjs.call("scenario", doc=name, name=scenario)["update"]
    state = yjs.call("diff", doc=name, state_vector=b"\x00")["update"]  # with the delete set
    for data in (update, state):
        read = as_yjs_reads_it(data)
        assert read == yjs.call("decode", update=data)
    kinds = {s["kind"] for s in as_yjs_reads_it(state)["structs"]}
    assert kinds >= {int(k) for k in SCENARIOS[scenario]}, kinds
    parents = {type(s["parent"]) for s in as_yjs_reads_it(state)["structs"]}
    if scenario in ("xml", "nested"):  # parents written out as names and as item ids
        assert parents >= {str, list}, parents
    if scenario in YRS_CANNOT_READ:
        with pytest.raises(ValueError):
            pycrdt.Doc().apply_update(state)
        return
    # and Yrs's own encoding of the same document (what a loaded copy's index reads)
    doc = pycrdt.Doc()
    doc.apply_update(state)
    written = doc.get_update()
    assert as_yjs_reads_it(written) == yjs.call("decode", update=written)


def test_skip_structs_of_merged_updates(yjs):
    yjs.call("new", doc="skips", client_id=31)
    first = yjs.call("insert", doc="skips", index=0, text="one ")["update"]
    yjs.call("insert", doc="skips", index=4, text="two ")  # left out: a gap in the clocks
    third = yjs.call("insert", doc="skips", index=8, text="three 😀")["update"]
    merged = yjs.call("merge", updates=[first, third])["update"]
    read = as_yjs_reads_it(merged)
    assert read == yjs.call("decode", update=merged)
    assert [s["kind"] for s in read["structs"]] == [Kind.STRING, Kind.SKIP, Kind.STRING]
    assert read["structs"][1]["length"] == 4


@pytest.mark.parametrize("text", ["", "ascii", "é中", "😀", "a😀b𐍈", "👨\u200d👩\u200d👧"])
def test_string_lengths_are_utf16_units(yjs, text):
    yjs.call("new", doc="lengths", client_id=32)
    answer = yjs.call("insert", doc="lengths", index=0, text=text)
    if not text:
        assert answer["update"] is None
        return
    (struct,) = decode_update(answer["update"]).structs
    assert struct.text == text
    assert struct.length == utf16_length(text) == answer["utf16_length"]


def test_every_truncation_and_any_trailing_byte_is_malformed(yjs):
    yjs.call("new", doc="cut", client_id=33)
    for scenario in ("any", "xml", "subdoc", "deleted", "format"):
        yjs.call("scenario", doc="cut", name=scenario)
    state = yjs.call("diff", doc="cut", state_vector=b"\x00")["update"]
    assert len(decode_update(state).structs) > 20
    for cut in range(len(state)):
        with pytest.raises(Lib0Error):
            decode_update(state[:cut])
    with pytest.raises(Lib0Error, match="trailing"):
        decode_update(state + b"\x00")


def one_item(info: int, content: bytes) -> bytes:
    """An update of one item of client 1 in the root type "m", with ``content``."""
    return b"\x01\x01\x01\x00" + bytes([info]) + b"\x01" + b"\x01m" + content + b"\x00"


@pytest.mark.parametrize("data,message", [
    (one_item(0x0B, b""), "unknown struct kind"),  # 11: no such struct
    (one_item(0x14, b"\x01a"), "unknown struct kind"),  # bit 4 set: Yrs reads a string
    (one_item(0x07, b"\x09"), "unknown type ref"),  # a sub-document type ref (Yrs only)
    (one_item(0x07, b"\x0f"), "unknown type ref"),  # "undefined" (Yrs only)
    (one_item(0x08, b"\x01\x73"), "unknown any tag"),
    (one_item(0x04, b"\x02\xff\xfe"), "not UTF-8"),
    (one_item(0x08, b"\x01\x7d" + b"\xff" * 9 + b"\x01"), "varint above"),
    (b"\x01\xff\xff\xff\xff\x0f\x01\x00", "truncated"),  # 4 billion structs claimed
    (b"\x00\x01\x01\xff\xff\xff\xff\x0f", "truncated"),  # 4 billion deletions claimed
])
def test_malformed_updates(data, message):
    with pytest.raises(Lib0Error, match=message):
        decode_update(data)


def test_values_nest_up_to_the_depth_limit():
    def nested(depth: int) -> bytes:  # ``depth`` arrays in arrays, an empty one innermost
        return one_item(0x08, b"\x01" + b"\x75\x01" * (depth - 1) + b"\x75\x00")

    (struct,) = decode_update(nested(MAX_ANY_DEPTH)).structs
    assert struct.kind == Kind.ANY and struct.length == 1
    with pytest.raises(Lib0Error, match="nested deeper"):
        decode_update(nested(MAX_ANY_DEPTH + 1))
    # objects nest the same way (each entry a key, then its value)
    deep_object = b"\x01" + b"\x76\x01\x01k" * (MAX_ANY_DEPTH + 1) + b"\x7e"
    decode_update(one_item(0x08, b"\x01" + b"\x76\x01\x01k" * MAX_ANY_DEPTH + b"\x7e"))
    with pytest.raises(Lib0Error, match="nested deeper"):
        decode_update(one_item(0x08, deep_object))


def test_counts_allocate_nothing_before_the_bytes_are_there():
    # a huge count of values, strings or bytes fails at the end of the input
    for content in (b"\x08" + var_uint(2**53 - 1), b"\x02" + var_uint(2**40),
                    b"\x03" + var_uint(2**40)):
        with pytest.raises(Lib0Error):
            decode_update(one_item(content[0], content[1:]))


def test_var_uints_of_every_width_read_back_wherever_they_sit():
    # lib0's Reader reads one to three bytes without its loop: every width, at the end of
    # the input and short of it, reads the same as it was written
    values = [0, 1, 127, 128, 300, 2**14 - 1, 2**14, 2**21 - 1, 2**21, 2**28, 2**35 + 3,
              2**53 - 1]
    for value in values:
        raw = var_uint(value)
        for before, after in ((b"", b""), (b"\x05", b""), (b"", b"\x00" * 3),
                              (b"\x01", b"\x7f")):
            reader = Reader(before + raw + after)
            if before:
                assert reader.var_uint() == before[0]
            assert reader.var_uint() == value
            assert reader.pos == len(before) + len(raw)
        for cut in range(1, len(raw)):
            with pytest.raises(Lib0Error, match="truncated"):
                Reader(raw[:cut]).var_uint()
    with pytest.raises(Lib0Error, match="above"):
        Reader(b"\xff" * 7 + b"\x7f").var_uint()
