"""The bench's reference: step 03's chat protocol served by pure asyncio and `websockets`.

It does the same work as step 03 for every message (parse the JSON frame, check it, render an
autoescaped fragment, keep the last 50, broadcast to everyone) with no framework and no thread,
so it is close to the fastest a single Python process can broadcast. The bench reports every
step as a ratio to it, measured in the same run on the same machine.

Run: HOST=127.0.0.1 PORT=5000 python bench/reference_server.py
"""

import asyncio
import ipaddress
import json
import os
from collections import deque
from datetime import datetime

from jinja2 import Environment
from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosedError

MAX_MESSAGE_BYTES = 64 * 1024
MAX_CHARS = 500
HISTORY = 50
# A client that stops reading lets its write buffer grow with every broadcast; past this much
# unsent data it is dropped so that it cannot use up the server's memory.
MAX_UNSENT_BYTES = 1024 * 1024
# 0: the online count goes to everyone on every join and leave, N² frames for N joins. Beside
# steps 08 and 09 (up to 10,000 pages, 50 million frames) it is sent at most every COUNT_DELAY
# seconds instead, as the steps send their presence.
COUNT_DELAY = float(os.environ.get("COUNT_DELAY", "0"))

templates = Environment(autoescape=True)
message_html = templates.from_string(
    '<li hx-swap-oob="beforeend:#messages"><b>{{ name }}</b> '
    "<time>{{ time }}</time> {{ text }}</li>"
)
online_html = templates.from_string('<p id="online" hx-swap-oob="true">{{ count }} online</p>')

clients = set()
history = deque(maxlen=HISTORY)
count_due = False  # a count is on its way (COUNT_DELAY)


async def chatroom(ws):
    if ws.request.path != "/chatroom":
        await ws.close(1008, "unknown path")
        return
    clients.add(ws)
    try:
        for fragment in history:
            await ws.send(fragment)
        push_count()
        async for frame in ws:
            fragment = render_message(frame)
            if fragment is not None:
                history.append(fragment)
                push(fragment)
    except ConnectionClosedError:
        pass  # the client vanished without a closing handshake: nothing to tidy but the set
    finally:
        clients.discard(ws)
        push_count()


def push_count():
    global count_due
    if not COUNT_DELAY:
        push(online_html.render(count=len(clients)))
    elif not count_due:
        count_due = True
        asyncio.get_running_loop().call_later(COUNT_DELAY, send_due_count)


def send_due_count():
    global count_due
    count_due = False
    push(online_html.render(count=len(clients)))


def render_message(frame):
    """The fragment for one chat message, or None for a frame that is not a valid message."""
    try:
        data = json.loads(frame)
        name = str(data.get("name", "")).strip() or "anonymous"
        text = str(data.get("chat_message", "")).strip()
    except (ValueError, AttributeError):
        return None
    if not text or len(text) > MAX_CHARS:
        return None
    return message_html.render(name=name[:40], time=datetime.now().strftime("%H:%M:%S"), text=text)


def push(fragment):
    for ws in [ws for ws in clients if ws.transport.get_write_buffer_size() > MAX_UNSENT_BYTES]:
        clients.discard(ws)
        ws.transport.abort()
    broadcast(clients, fragment)


async def main(host, port):
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"the reference server listens on loopback only, not {host}")
    async with serve(chatroom, host, port, max_size=MAX_MESSAGE_BYTES, ping_interval=None) as s:
        await s.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "5000"))))
