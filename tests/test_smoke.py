async def test_document_roundtrip(server):
    alice = await server.connect("alice")
    ack = await alice.ok("documents:create", {"document_id": "d1", "content": "hi"})
    assert ack["document"]["version"] == 0
    ack = await alice.ok("documents:join", {"document_id": "d1"})
    assert ack["users"] == ["alice"]
