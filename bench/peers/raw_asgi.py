"""The floor: /health as fixed bytes from a bare ASGI callable. No framework can beat it on this server."""

BODY = b'{"api":"website-api","version":1,"status":"ok"}'
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
NOT_FOUND = {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/health":
        await send(START)
        await send({"type": "http.response.body", "body": BODY})
    else:
        await send(NOT_FOUND)
        await send({"type": "http.response.body", "body": b""})
