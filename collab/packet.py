"""The Socket.IO packet class the server uses, with a decoder that cannot crash it.

A payload nested beyond what Python's decoder can take (or otherwise not
JSON) is turned into the event :data:`MALFORMED_EVENT`, which the dispatcher
answers with ``INVALID_INPUT`` on the packet's own ack id. So is an event
whose data is not ``[name, *args]`` with a string name, and a binary event
announcing more attachments than the protocol uses. A CONNECT packet with a
payload that is not JSON ends up with no usable token and is refused.

A packet that cannot be read far enough to know what it is or which ack id
it carries (a bad type, an ack id too long to be one) raises
:class:`MalformedPacket`: there is nothing to answer, and the server closes
that connection (collab/sioserver.py).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from socketio import packet

from .text import is_text

MALFORMED_EVENT = "\x00malformed"
#: deeper than any payload of the protocol needs, far below Python's recursion limit
MAX_DEPTH = 64
#: binary attachments one packet may announce. Protocol v1 uses none; v2's live
#: documents at most three (state_vector, update, awareness). A header may announce
#: up to 9,999,999,999, and python-socketio would keep every later frame of the
#: connection as one of them.
MAX_ATTACHMENTS = 8
#: the longest CONNECT packet: its payload is ``{"token": ...}``, a few hundred bytes
#: (an RS512 token with many claims a few KiB). Checked before it is decoded: a
#: handshake needs no token, so it must stay cheap.
MAX_CONNECT_CHARS = 16 * 1024

#: packet types a client may send (CONNECT_ERROR goes from server to client only)
CLIENT_TYPES = frozenset((packet.CONNECT, packet.DISCONNECT, packet.EVENT, packet.ACK,
                          packet.BINARY_EVENT, packet.BINARY_ACK))

#: a JSON string, as one unrolled loop (an alternation per character is 20 times slower)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
#: every byte but the four brackets, for bytes.translate to delete
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def too_deep(text: str) -> bool:
    """Whether arrays and objects in JSON ``text`` nest deeper than :data:`MAX_DEPTH`.

    Without recursing, and with no Python-level step per bracket (a megabyte of
    ``[],`` cost 81 ms that way: a denial of service in one packet): strings are
    cut out and every other byte but brackets deleted at C speed, and the depth is
    the largest running sum of +1 / -1 (``map``, ``accumulate`` and ``max`` run in
    C too). About 25 ms for a megabyte of brackets, 3 ms for one long string.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # cannot be too deep: skip the scan on the common path
    brackets = _STRING.sub("", text).encode("utf-8", "surrogatepass")
    brackets = brackets.translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)),
               default=0) > MAX_DEPTH


class SafeJSON:
    """The ``json`` module's interface, as python-socketio calls it."""

    JSONDecodeError = json.JSONDecodeError

    @staticmethod
    def dumps(*args: Any, **kwargs: Any) -> str:
        # UTF-8 on the wire: with ensure_ascii an emoji costs 12 bytes instead of 4,
        # which made pages of messages that are within their character limit three
        # times the bytes.
        kwargs.setdefault("ensure_ascii", False)
        text = json.dumps(*args, **kwargs)
        if not is_text(text):
            # A lone surrogate has no UTF-8 and would fail at the socket (for a
            # broadcast, for the whole room). Schemas keep them out of what is
            # stored, but client input can be echoed (an unknown field's name
            # in an error): such a packet goes out escaped, as it came in.
            kwargs["ensure_ascii"] = True
            return json.dumps(*args, **kwargs)
        return text

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if too_deep(text):
            return [MALFORMED_EVENT, "payload is nested too deeply"]
        try:
            return json.loads(text, **kwargs)
        except RecursionError:
            return [MALFORMED_EVENT, "payload is nested too deeply"]
        except ValueError:
            return [MALFORMED_EVENT, "payload is not valid JSON"]


class MalformedPacket(ValueError):
    """A client's packet read too little of to be answered."""


def _placeholders_fit(data: Any, count: int) -> bool:
    """Whether every attachment placeholder in ``data`` (as python-socketio finds them
    when it puts the attachments in) names one of ``count`` attachments.

    Recursion is safe: :class:`SafeJSON` refused anything nested deeper than MAX_DEPTH.
    """
    if isinstance(data, list):
        return all(_placeholders_fit(item, count) for item in data)
    if isinstance(data, dict):
        if data.get("_placeholder") and "num" in data:
            num = data["num"]
            return type(num) is int and 0 <= num < count
        return all(_placeholders_fit(value, count) for value in data.values())
    return True


def event_problem(data: Any, attachments: int | None) -> str | None:
    """Why an EVENT (``attachments`` None) or BINARY_EVENT cannot be dispatched, or None."""
    if not isinstance(data, list) or not data:
        return "event data must be a list: the event name, then its arguments"
    if not isinstance(data[0], str):
        return "the event name must be a string"
    if attachments is not None:
        if not 1 <= attachments <= MAX_ATTACHMENTS:
            return f"a packet may carry 1 to {MAX_ATTACHMENTS} binary attachments"
        if not _placeholders_fit(data, attachments):
            return "a binary placeholder names no attachment"
    return None


class CollabPacket(packet.Packet):
    json = SafeJSON
    #: a BINARY_EVENT refused at its header (now a MALFORMED_EVENT): attachments the
    #: client sends for it are skipped, not kept
    refused_attachments = False
    #: bytes of the attachments received so far (the server bounds them)
    attachment_bytes = 0

    def decode(self, encoded_packet: str) -> int:
        """python-socketio's decode, for packets from a client: see the module docstring."""
        if encoded_packet[:1] == str(packet.CONNECT) and len(encoded_packet) > MAX_CONNECT_CHARS:
            raise MalformedPacket(f"a CONNECT over {MAX_CONNECT_CHARS} characters")
        try:
            attachments = super().decode(encoded_packet)
        except (ValueError, TypeError):  # a bad type digit, ack id or attachment count
            raise MalformedPacket("a packet that cannot be decoded") from None
        kind = self.packet_type
        if kind not in CLIENT_TYPES:
            raise MalformedPacket("a packet type a client may not send")
        if kind in (packet.ACK, packet.BINARY_ACK):
            if not isinstance(self.data, list):
                raise MalformedPacket("ack data must be a list")
            if kind == packet.BINARY_ACK and not 1 <= attachments <= MAX_ATTACHMENTS:
                raise MalformedPacket(f"a packet may carry 1 to {MAX_ATTACHMENTS} attachments")
        elif kind in (packet.EVENT, packet.BINARY_EVENT):
            binary = kind == packet.BINARY_EVENT
            problem = event_problem(self.data, attachments if binary else None)
            if problem is not None:
                self.refused_attachments = binary
                self.packet_type = packet.EVENT
                self.data = [MALFORMED_EVENT, problem]
                return 0
        return attachments
