"""The bench's storing reference: step 09's chat contract served by pure asyncio and `websockets`.

What step 09 does for every message, with no framework and no thread: it speaks the few
Engine.IO and Socket.IO packets a page uses (`0`, `40`, `join` and `send message` with their
acknowledgements, `new message`), checks the message as messages.py does, stores it in SQLite
with step 09's schema.sql (WAL, `synchronous = NORMAL`, one commit per message) and only then
sends it to every socket in its room. So "how many messages a second can a Python process store
and deliver" is measured beside the step, in the same run (bench/capacity.md).

What it leaves out, and the step does not: sign-in (everyone is one user), the per-user rate
limit, the second server and Redis, pings, the history sent on a join.

Run: HOST=127.0.0.1 PORT=5000 DATABASE=/tmp/chat.sqlite python bench/storing_reference.py
"""

import asyncio
import ipaddress
import json
import os
import re
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

SCHEMA = Path(__file__).parent.parent / "steps" / "09_production" / "schema.sql"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CHARS = 500
MAX_UNSENT_BYTES = 1024 * 1024  # a socket this far behind is dropped, as the reference does
EVENT = re.compile(r"42(\d*)(.*)", re.DOTALL)  # 42, the acknowledgement's number if asked, the JSON
# Open to everyone if it is public (messages.py's rule; the reference's one user owns nothing).
OPEN_ROOM = "SELECT 1 FROM rooms WHERE name = ? AND owner_id IS NULL"

rooms = {}  # room name -> the sockets in it


def open_database(path):
    database = sqlite3.connect(path, isolation_level=None)  # transactions by hand
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = NORMAL")
    database.execute("PRAGMA foreign_keys = ON")
    database.executescript(SCHEMA.read_text())
    database.execute("INSERT OR IGNORE INTO users (id, name, password_hash) VALUES (1, 'ref', '')")
    return database


async def page(ws, database):
    """One page's socket: the Engine.IO open packet, then its Socket.IO packets one by one."""
    hello = {"sid": secrets.token_urlsafe(12), "upgrades": [], "pingInterval": 25000}
    await ws.send("0" + json.dumps({**hello, "pingTimeout": 20000}))
    joined = set()
    try:
        async for packet in ws:
            if packet == "40":
                await ws.send(f'40{{"sid": "{secrets.token_urlsafe(12)}"}}')
            elif event := EVENT.match(packet):
                ack = event[1]
                answer = handle(ws, joined, database, *json.loads(event[2]))
                if ack:
                    await ws.send(f"43{ack}" + json.dumps([answer]))
    except ConnectionClosed:
        pass
    finally:
        for room in joined:
            rooms[room].discard(ws)


def handle(ws, joined, database, name, data=None, *_):
    if not isinstance(data, dict) or not isinstance(data.get("room"), str):
        return {"error": "That needs a room name as text."}
    room = data["room"]
    if not database.execute(OPEN_ROOM, (room,)).fetchone():
        return {"error": "There is no room by that name that you may enter."}
    if name == "join":
        rooms.setdefault(room, set()).add(ws)
        joined.add(room)
        return {"ok": True}
    if name != "send message" or not isinstance(data.get("text"), str):
        return {"error": "That was not a chat message."}
    text = data["text"].strip()
    if not text or len(text) > MAX_CHARS:
        return {"error": f"A message has 1 to {MAX_CHARS} characters."}
    message = {"room": room, "name": "ref", "text": text}
    message["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    database.execute("BEGIN")
    message["id"] = database.execute(
        "INSERT INTO messages (room, user_id, time, text) VALUES (?, 1, ?, ?)",
        (room, message["time"], text),
    ).lastrowid
    database.execute("COMMIT")  # stored before it is sent
    listeners = rooms.get(room, set())
    for behind in [s for s in listeners if s.transport.get_write_buffer_size() > MAX_UNSENT_BYTES]:
        listeners.discard(behind)
        behind.transport.abort()
    broadcast(listeners, "42" + json.dumps(["new message", message]))
    return {"ok": True}


async def main(host, port, path):
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"the reference server listens on loopback only, not {host}")
    database = open_database(path)
    handler = lambda ws: page(ws, database)  # noqa: E731
    async with serve(handler, host, port, max_size=MAX_MESSAGE_BYTES, ping_interval=None) as s:
        await s.serve_forever()


if __name__ == "__main__":
    asyncio.run(
        main(
            os.environ.get("HOST", "127.0.0.1"),
            int(os.environ.get("PORT", "5000")),
            os.environ.get("DATABASE", "chat.sqlite"),
        )
    )
