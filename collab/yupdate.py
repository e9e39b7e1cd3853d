"""Yjs updates (format v1) read struct by struct: ids, origins, string content, deletions.

Why collab reads updates itself: pycrdt applies an update whole and shows nothing of
its structs, but whether an update splits a surrogate pair (collab/surrogates.py)
depends on exactly that: which ids its items' origins name, and which ids of
``ContentString`` items hold the two UTF-16 halves of a non-BMP character; and how
deep it nests shared types (collab/typedepth.py) depends on the parents its items
write out.

The format is Yjs's (src/utils/encoding.js ``readClientsStructRefs``, UpdateDecoderV1,
src/structs/*.js ``read*``; lib0 ``readAny``), read the way Yjs reads it: an update
Yjs could not read is refused even where Yrs accepts it, since every JavaScript
client would fail on it when relayed. Yrs 0.28 differs from Yjs in two places (it
reads one string more for ``ContentJSON`` and no name for ``Y.XmlHook``), so those
two contents, which Yjs writes, pycrdt refuses before this module sees them.

Strict like :mod:`collab.lib0`: anything malformed raises :class:`Lib0Error`, and
nothing allocates more than the input's size (counts are never trusted for
preallocation, every loop step consumes input, nesting is walked without recursion
and bounded by :data:`MAX_ANY_DEPTH`).
Values other than strings (JSON, Any, binary, embeds) are checked and skipped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .lib0 import MAX_VAR_UINT, Lib0Error, Reader

__all__ = ["DeleteRange", "Id", "Kind", "Struct", "Update", "decode_update", "utf16_length"]


class Kind(enum.IntEnum):
    """A struct's kind: the low 5 bits of its info byte (the content ref numbers)."""

    GC = 0
    DELETED = 1
    JSON = 2
    BINARY = 3
    STRING = 4
    EMBED = 5
    FORMAT = 6
    TYPE = 7
    ANY = 8
    DOC = 9
    SKIP = 10


_KINDS = tuple(Kind)  # (indexing a tuple is cheaper than calling the enum)
# plain ints for the decoder's comparisons, cheaper than the enum's members
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)

#: the type refs Yjs reads (src/structs/ContentType.js ``typeRefs``); these two have a name
_TYPE_REFS = range(7)
_NAMED_TYPE_REFS = (3, 5)  # YXmlElement (node name), YXmlHook (hook name)

_HAS_ORIGIN = 0x80
_HAS_RIGHT_ORIGIN = 0x40
_HAS_PARENT_SUB = 0x20
_KIND_BITS = 0x1F


@dataclass(slots=True)
class Id:
    """A Yjs id: a client and a clock (one clock per UTF-16 unit of text)."""

    client: int
    clock: int


@dataclass(slots=True)
class Struct:
    """One struct of an update: it covers clocks ``clock`` to ``clock + length - 1``
    of ``client``. ``text`` is the string of a :attr:`Kind.STRING` item.

    ``parent`` is the parent as the item writes it out: a root type's name (bytes, as
    Yjs compares them) or the id of the type item it lives in. It is None for GC and
    skip structs and for items with an origin or a right origin, whose parent is
    that of the item their origin (else their right origin) names."""

    kind: Kind
    client: int
    clock: int
    length: int
    origin: Id | None = None
    right_origin: Id | None = None
    text: str | None = None
    parent: Id | bytes | None = None


@dataclass(slots=True)
class DeleteRange:
    """Clocks ``clock`` to ``clock + length - 1`` of ``client`` are deleted."""

    client: int
    clock: int
    length: int


@dataclass(slots=True)
class Update:
    structs: list[Struct]
    deletes: list[DeleteRange]


def utf16_length(text: str) -> int:
    """Length of ``text`` in UTF-16 units, as JavaScript's ``str.length`` counts it."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def decode_update(data: bytes) -> Update:
    """Decode a Yjs v1 update; :class:`Lib0Error` if it is not one Yjs could read."""
    reader = Reader(bytes(data))
    structs: list[Struct] = []
    for _ in range(reader.var_uint()):  # each step reads bytes: a huge count hits the end
        count = reader.var_uint()
        client = reader.var_uint()
        clock = reader.var_uint()
        for _ in range(count):
            read = _read_struct(reader, client, clock)
            structs.append(read)
            clock += read.length
            if clock > MAX_VAR_UINT:
                raise Lib0Error("clock above 2**53 - 1")
    deletes: list[DeleteRange] = []
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        for _ in range(reader.var_uint()):
            deletes.append(DeleteRange(client, reader.var_uint(), reader.var_uint()))
    reader.end()
    return Update(structs, deletes)


def _read_struct(reader: Reader, client: int, clock: int) -> Struct:
    info = _byte(reader)
    kind = info & _KIND_BITS
    if kind == _GC or kind == _SKIP:
        return Struct(_KINDS[kind], client, clock, reader.var_uint())
    if kind > _SKIP:
        raise Lib0Error(f"unknown struct kind {kind}")
    origin = Id(reader.var_uint(), reader.var_uint()) if info & _HAS_ORIGIN else None
    right = Id(reader.var_uint(), reader.var_uint()) if info & _HAS_RIGHT_ORIGIN else None
    parent: Id | bytes | None = None
    if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):  # the parent is written out
        if reader.var_uint() == 1:
            parent = reader.var_bytes()  # a root type's name
        else:
            parent = Id(reader.var_uint(), reader.var_uint())  # a nested type's item id
        if info & _HAS_PARENT_SUB:
            reader.var_bytes()  # the map key
    text = None
    if kind == _STRING:
        text = reader.var_string()
        length = utf16_length(text)
    elif kind == _DELETED:
        length = reader.var_uint()
    elif kind == _JSON:
        length = reader.var_uint()
        for _ in range(length):
            reader.var_string()
    elif kind == _ANY:
        length = reader.var_uint()
        for _ in range(length):
            _skip_any(reader)
    else:
        length = 1
        if kind == _BINARY:
            reader.var_bytes()
        elif kind == _EMBED:
            reader.var_string()  # JSON
        elif kind == _FORMAT:
            reader.var_string()  # key
            reader.var_string()  # JSON value
        elif kind == _TYPE:
            ref = reader.var_uint()
            if ref not in _TYPE_REFS:
                raise Lib0Error(f"unknown type ref {ref}")
            if ref in _NAMED_TYPE_REFS:
                reader.var_string()
        elif kind == _DOC:
            reader.var_string()  # guid
            _skip_any(reader)  # options
    return Struct(_KINDS[kind], client, clock, length, origin, right, text, parent)


def _byte(reader: Reader) -> int:
    if reader.pos >= len(reader.data):
        raise Lib0Error("truncated")
    value = reader.data[reader.pos]
    reader.pos += 1
    return value


def _skip(reader: Reader, size: int) -> None:
    if reader.pos + size > len(reader.data):
        raise Lib0Error("truncated")
    reader.pos += size


def _skip_var_int(reader: Reader) -> None:
    """lib0 ``readVarInt``: sign and 6 bits, then 7 bits a byte; at most 2**53 - 1."""
    first = _byte(reader)
    value, shift, byte = first & 0x3F, 6, first
    while byte & 0x80:
        byte = _byte(reader)
        value |= (byte & 0x7F) << shift
        shift += 7
        if value > MAX_VAR_UINT:
            raise Lib0Error("varint above 2**53 - 1")


_FIXED = {124: 4, 123: 8, 122: 8}  # float32, float64, bigint64
_EMPTY = frozenset((127, 126, 121, 120))  # undefined, null, false, true

#: How deep Any values (arrays and objects) may nest. Yrs reads and writes them
#: recursively: measured with pycrdt 0.14, 50,000 levels (a 100 KB update) overflow
#: the main thread's stack and kill the process (SIGSEGV) in ``pycrdt.get_state``
#: already, so such an update must be refused before pycrdt sees it. JavaScript's
#: own stack stops lib0 at about 10,000 levels; no document nests values 1,000 deep.
MAX_ANY_DEPTH = 1000


def _skip_any(reader: Reader) -> None:
    """lib0 ``readAny``, skipping the value. Nesting is a stack of values still owed
    (an object's entries owe a key first), at most :data:`MAX_ANY_DEPTH` deep."""
    owed = [[1, False]]  # [values left, keyed] per open array/object
    while owed:
        top = owed[-1]
        if top[0] == 0:
            owed.pop()
            continue
        top[0] -= 1
        if top[1]:
            reader.var_bytes()
        tag = _byte(reader)
        if tag in _EMPTY:
            continue
        if tag == 125:
            _skip_var_int(reader)
        elif tag in _FIXED:
            _skip(reader, _FIXED[tag])
        elif tag == 119:
            reader.var_string()
        elif tag == 118 or tag == 117:
            if len(owed) > MAX_ANY_DEPTH:
                raise Lib0Error(f"values nested deeper than {MAX_ANY_DEPTH}")
            owed.append([reader.var_uint(), tag == 118])
        elif tag == 116:
            reader.var_bytes()
        else:
            raise Lib0Error(f"unknown any tag {tag}")
