"""Step 04: the chat again, on Socket.IO with Flask-SocketIO.

Named events instead of raw frames: the page emits `send message`, the server broadcasts
`new message` and `presence` to everyone, and a background task pushes `tick` (step 02's clock).
The library now keeps a queue per client, reconnects, and falls back to long-polling. Its queues
have no limit, so the room drops a client that falls too far behind. Run it with `make step-04`
or `python app.py`.
"""

import contextlib
import os
import queue
import threading
import time
from datetime import datetime

from flask import Flask, render_template, request
from flask_socketio import SocketIO, emit

MAX_MESSAGE_CHARS = 500
MAX_NAME_CHARS = 40
CLOCK_INTERVAL = float(os.environ.get("CLOCK_INTERVAL", "5"))
# SEND_BURST: how many messages a page may send in a row; SEND_RATE: how many a second after
# that (0 turns the limit off). A person typing never meets the defaults.
SEND_BURST = int(os.environ.get("SEND_BURST", "10"))
SEND_RATE = float(os.environ.get("SEND_RATE", "5"))
TOO_FAST = (
    f"Slow down: at most {SEND_BURST} messages in a row, then {SEND_RATE:g} a second. "
    "That one was not sent."
)
# QUEUE: how many packets a client may fall behind before it is dropped.
QUEUE = int(os.environ.get("QUEUE", "100"))
# How often the room is looked after: the clients too far behind are dropped, and the people
# online count goes out if it changed (at most once per look, however many joined meanwhile).
ROOM_CHECK = 0.2

app = Flask(__name__)
# threading: one thread per connection on simple-websocket, no eventlet or gevent to install.
# Engine.IO accepts packets of up to 1 MB unless told otherwise; a bigger one closes that client.
# Same-origin is enforced because cors_allowed_origins is left at its default (never "*").
socketio = SocketIO(app, async_mode="threading", max_http_buffer_size=64 * 1024)

online = 0
online_changed = False
online_lock = threading.Lock()  # handlers run in threads of their own
send_limits = {}  # one SendLimit per connection, by sid: its events may run in two threads at once
tasks = None  # the background tasks, started by the first client that connects
tasks_lock = threading.Lock()


@app.get("/")
def index():
    return render_template("index.html", clock=clock_time())


@socketio.on("connect")
def on_connect():
    start_background_tasks()
    if sent_as_an_event():
        return False
    send_limits[request.sid] = SendLimit(SEND_BURST, SEND_RATE)
    count_online(+1)


@socketio.on("disconnect")
def on_disconnect(reason):
    if sent_as_an_event():
        return
    send_limits.pop(request.sid, None)
    count_online(-1)


def sent_as_an_event():
    """Whether this `connect` or `disconnect` is a client's event of that name, 42["connect"]:
    python-socketio calls our handler for it as for the real thing, but the socket stays
    connected (a new bucket would lift its rate limit). While a socket really connects or
    disconnects, Socket.IO counts it as not connected."""
    return socketio.server.manager.is_connected(request.sid, "/")


@socketio.on("send message")
def on_send_message(message):
    # What we return is the acknowledgement: it goes back to the sender alone, to its own emit.
    # Every event counts. (A client that left while its events waited for a thread has no limit
    # any more; nobody reads the answer then.)
    limit = send_limits.get(request.sid)
    if limit is None or not limit.allow():
        return {"error": TOO_FAST}
    name, text, error = read_message(message)
    if error:
        return {"error": error}
    now = datetime.now().strftime("%H:%M")
    # broadcast=True: to every connected client, the sender included.
    emit("new message", {"name": name, "time": now, "text": text}, broadcast=True)
    return {"ok": True}


def read_message(message):
    """Return (name, text, None) for a good message, or (None, None, what is wrong with it)."""
    if not (
        isinstance(message, dict)
        and isinstance(message.get("data"), str)
        and isinstance(message.get("username"), str)
    ):
        return None, None, "That was not a chat message (it needs data and username as text)."
    text = message["data"].strip()
    name = message["username"].strip()
    if not text:
        return None, None, "Type a message before you send it."
    if len(text) > MAX_MESSAGE_CHARS:
        return (
            None,
            None,
            f"A message has at most {MAX_MESSAGE_CHARS} characters; yours has {len(text)}.",
        )
    if len(name) > MAX_NAME_CHARS:
        return None, None, f"A name has at most {MAX_NAME_CHARS} characters."
    return name or "anonymous", text, None


class SendLimit:
    """A token bucket: `burst` messages at once, then `rate` a second; rate 0 means no limit."""

    def __init__(self, burst: int, rate: float):
        self.burst = self.tokens = burst
        self.rate = rate
        self.last = time.monotonic()
        self.lock = threading.Lock()  # so that two threads may call allow() at once

    def allow(self) -> bool:
        if not self.rate:
            return True
        with self.lock:
            now = time.monotonic()
            # The bucket refills with time, up to `burst`; each message takes one token.
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


def count_online(change):
    global online, online_changed
    with online_lock:
        online += change
        online_changed = True


def look_after_the_room():
    """Every ROOM_CHECK seconds: drop the clients too far behind, then send the count."""
    while True:
        drop_clients_behind()
        push_presence()
        socketio.sleep(ROOM_CHECK)


def drop_clients_behind():
    """Drop every client more than QUEUE packets behind: it stopped reading, or cannot keep up.

    Engine.IO queues what we emit to a client without limit, and offers no setting for one; its
    heartbeat ends a client that stops answering pings, but only after 25 + 20 s, and never one
    that answers them without reading. So we look at its queues (an internal, pinned in
    pyproject.toml; tests/test_04_socketio_broadcast.py fails if it changes).
    """
    for client in socketio.server.eio.sockets.copy().values():
        behind = client.queue.qsize()
        if behind > QUEUE:
            app.logger.warning("Dropped client %s: %d packets behind", client.sid, behind)
            # abort: no close packet (it would wait behind the rest); runs our disconnect handler.
            client.close(wait=False, abort=True)
            # Free what it will never read. Its writer thread may be stuck sending to it until
            # its connection closes; the None ends that thread as soon as it gets there.
            with contextlib.suppress(queue.Empty):
                while True:
                    client.queue.get_nowait()
            client.queue.put(None)


def push_presence():
    """Send the latest count to everyone if it changed since the last look.

    One event per join would cost N² packets for N joins: 500 pages reconnecting after a restart
    would be sent 125,000 counts. Coalesced, they cost a few broadcasts.
    """
    global online_changed
    with online_lock:
        changed, count = online_changed, online
        online_changed = False
    # Not under the lock: an emit can find a client whose heartbeat timed out, and Engine.IO then
    # runs our disconnect handler in this very thread, which would wait for the lock forever.
    if changed:
        socketio.emit("presence", {"count": count})


def start_background_tasks():
    # Started on the first connection, not at import: the debug reloader's watcher process
    # imports this file too but never accepts a connection, so only the serving process ticks.
    global tasks
    with tasks_lock:
        if tasks is None:
            tasks = [
                socketio.start_background_task(push_time),
                socketio.start_background_task(look_after_the_room),
            ]


def push_time():
    while True:
        socketio.emit("tick", clock_time())
        socketio.sleep(CLOCK_INTERVAL)


def clock_time():
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    # socketio.run refuses Werkzeug's development server when stdin is not a terminal (tests,
    # notebooks, CI); this flag says we know it is a development server.
    socketio.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
