async def test_chat_nonstream(client, fake):
    resp = await client.post("/api/chat", json={"model": "llama3.2", "stream": False})
    assert resp.status == 200
    print(resp.headers)
    print(await resp.read())
    print(fake.requests[-1])
