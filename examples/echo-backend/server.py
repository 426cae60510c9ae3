"""The compose stack's messaging backend: what a chat server looks like from
behind portcullis, in the shape of portcullis's built-in demo backend.

GET / serves the chat page (web/demo.html, mounted at /app/index.html),
GET /healthz answers "ok", a WebSocket on any path gets a welcome naming the
identity headers portcullis added, then an echo of every message; other
requests get a JSON description of themselves. Listens on 0.0.0.0:$PORT
(default 8080).
"""

import asyncio
import json
import os
import pathlib

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

PAGE = pathlib.Path("/app/index.html")


def header_map(headers):
    out = {}
    for name, value in headers.raw_items():
        out.setdefault(name.lower(), []).append(value)
    return out


def respond(status, reason, content_type, body):
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status, reason, headers, body)


def process_request(connection, request):
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None  # go on with the WebSocket handshake
    path, _, query = request.path.partition("?")
    if path == "/healthz":
        return respond(200, "OK", "text/plain", b"ok")
    if path == "/" and PAGE.exists():
        return respond(200, "OK", "text/html; charset=utf-8", PAGE.read_bytes())
    body = {"path": path, "query": query or None, "headers": header_map(request.headers)}
    return respond(200, "OK", "application/json", json.dumps(body).encode())


async def chat(ws):
    headers = ws.request.headers
    who = next(
        (headers[h] for h in ("X-Auth-Name", "X-Auth-Email", "X-Auth-Subject") if h in headers),
        "anonymous",
    )
    identity = {k.lower(): v for k, v in headers.raw_items() if k.lower().startswith("x-auth-")}
    await ws.send(json.dumps({
        "type": "welcome",
        "protocol": ws.subprotocol,
        "user": who,
        "identity": identity,
        "headers": header_map(headers),
    }))
    async for message in ws:
        if isinstance(message, bytes):
            await ws.send(message)
        else:
            await ws.send(json.dumps({"type": "echo", "from": who, "text": message}))


async def main():
    async with serve(chat, "0.0.0.0", int(os.environ.get("PORT", "8080")), subprotocols=["chat.v1", "chat.v2"],
                     process_request=process_request) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
