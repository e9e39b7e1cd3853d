"""Room names: built and parsed in one place (collab/rooms.py)."""

from __future__ import annotations

import pytest

from collab.rooms import Room


@pytest.mark.parametrize("room", [Room.document("report"), Room.chat("a_b:c.d-e"),
                                  Room.document("x")])
def test_a_room_name_parses_back_to_its_room(room):
    assert Room.parse(room.name) == room
    assert room.subject == {f"{room.kind}_id": room.id}


def test_names_and_subjects_are_the_protocols():
    assert Room.document("report").name == "document_report"
    assert Room.chat("general").subject == {"chat_id": "general"}
    assert Room.document("r").presence("bob") == {"user_id": "bob", "document_id": "r"}


@pytest.mark.parametrize("name", ["report", "document_", "user_x", "_x", "", None, 7,
                                  "Jf8aZ_k2Q9"])  # a python-socketio sid may hold "_"
def test_other_names_are_no_room(name):
    assert Room.parse(name) is None
