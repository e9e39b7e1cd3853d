"""The lib0 encoding that Yjs and y-protocols frame everything with: strict decoding.

A varuint is 7 bits a byte, low bits first, the high bit set on every byte but the
last; a varstring is a varuint byte length and that many bytes of UTF-8. lib0 reads
numbers up to 2**53 - 1 (JavaScript's safe integers), so a longer varuint is no
number any Yjs client could have written.

pycrdt's own ``Decoder`` raises ``IndexError`` on truncated input, returns a short
string when a length prefix overruns, and its ``Encoder.write_var_string`` writes
the length in code points rather than bytes; so collab decodes with this module,
which raises :class:`Lib0Error` (a ``ValueError``) on anything malformed and never
allocates more than the input's size.
"""

from __future__ import annotations

#: lib0 writes and reads integers up to Number.MAX_SAFE_INTEGER
MAX_VAR_UINT = 2**53 - 1
_MAX_VAR_UINT_BYTES = 8  # 8 * 7 = 56 bits hold any 53-bit number


class Lib0Error(ValueError):
    """Bytes that are not valid lib0 encoding."""


class Reader:
    """Reads lib0 values from ``data``, front to back."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def var_uint(self) -> int:
        data, pos = self.data, self.pos
        # one to three bytes (below 2**21: lengths, counts, most clocks) without the loop
        if pos + 3 <= len(data):
            first = data[pos]
            if first < 0x80:
                self.pos = pos + 1
                return first
            second = data[pos + 1]
            if second < 0x80:
                self.pos = pos + 2
                return (first & 0x7F) | second << 7
            third = data[pos + 2]
            if third < 0x80:
                self.pos = pos + 3
                return (first & 0x7F) | (second & 0x7F) << 7 | third << 14
        value = 0
        shift = 0
        for _ in range(_MAX_VAR_UINT_BYTES):
            if pos >= len(data):
                raise Lib0Error("truncated varuint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value > MAX_VAR_UINT:
                    raise Lib0Error("varuint above 2**53 - 1")
                self.pos = pos
                return value
            shift += 7
        raise Lib0Error("varuint longer than 8 bytes")

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        end = self.pos + length
        if end > len(self.data):
            raise Lib0Error("length prefix runs past the end")
        chunk = bytes(self.data[self.pos:end])
        self.pos = end
        return chunk

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Lib0Error("varstring is not UTF-8") from exc

    def end(self) -> None:
        """Insist that everything was read: trailing bytes mean a framing error."""
        if not self.done:
            raise Lib0Error(f"{len(self.data) - self.pos} trailing bytes")


def var_uint(value: int) -> bytes:
    if not 0 <= value <= MAX_VAR_UINT:
        raise ValueError(f"varuint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def var_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return var_uint(len(raw)) + raw


def read_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs state vector (``{client: clock}``), refusing anything malformed.

    Yrs reads client ids as u64 and clocks as u32; lib0's 53-bit ceiling is the
    tighter one for clients, 2**32 - 1 for clocks.
    """
    reader = Reader(data)
    count = reader.var_uint()
    if count > len(data) // 2:  # every entry takes at least two bytes
        raise Lib0Error("state vector claims more entries than it has bytes")
    vector: dict[int, int] = {}
    for _ in range(count):
        client = reader.var_uint()
        clock = reader.var_uint()
        if clock > 0xFFFFFFFF:
            raise Lib0Error("clock above 2**32 - 1")
        vector[client] = clock
    reader.end()
    return vector
