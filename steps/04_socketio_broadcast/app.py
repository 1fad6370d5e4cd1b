"""Step 04: the chat again, on Socket.IO with Flask-SocketIO.

Named events instead of raw frames: the page emits `send message`, the server broadcasts
`new message` and `presence` to everyone, and a background task pushes `tick` (step 02's clock).
The library now keeps a queue per client, reconnects, and falls back to long-polling.
Run it with `make step-04` or `python app.py`.
"""

import os
import threading
from datetime import datetime

from flask import Flask, render_template
from flask_socketio import SocketIO, emit

MAX_MESSAGE_CHARS = 500
MAX_NAME_CHARS = 40
CLOCK_INTERVAL = float(os.environ.get("CLOCK_INTERVAL", "5"))

app = Flask(__name__)
# threading: one thread per connection on simple-websocket, no eventlet or gevent to install.
# Engine.IO accepts packets of up to 1 MB unless told otherwise; a bigger one closes that client.
# Same-origin is enforced because cors_allowed_origins is left at its default (never "*").
socketio = SocketIO(app, async_mode="threading", max_http_buffer_size=64 * 1024)

online = 0
online_lock = threading.Lock()  # handlers run in one thread per client
clock = None  # the background task, started by the first client that connects
clock_lock = threading.Lock()


@app.get("/")
def index():
    return render_template("index.html", clock=clock_time())


@socketio.on("connect")
def on_connect():
    start_clock()
    count_online(+1)


@socketio.on("disconnect")
def on_disconnect(reason):
    count_online(-1)


@socketio.on("send message")
def on_send_message(message):
    # What we return is the acknowledgement: it goes back to the sender alone, to its own emit.
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


def count_online(change):
    global online
    with online_lock:
        online += change
        count = online
    # Not under the lock: an emit can find a client whose heartbeat timed out, and Engine.IO then
    # runs our disconnect handler in this very thread, which would wait for the lock forever.
    socketio.emit("presence", {"count": count})


def start_clock():
    # Started on the first connection, not at import: the debug reloader's watcher process
    # imports this file too but never accepts a connection, so only the serving process ticks.
    global clock
    with clock_lock:
        if clock is None:
            clock = socketio.start_background_task(push_time)


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
