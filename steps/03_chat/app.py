"""Step 03: a chat room, safe with every input and every client.

The page sends its form over the /chatroom socket with htmx 4 (`hx-ws:send`); the server checks
each message and broadcasts it to every page as an HTML fragment. A newcomer first gets the last
messages. Every connection has its own bounded outbox and writer (hub.py), so one frozen client
cannot stall the room, and its own rate limit, so one flooding client cannot flood it. Run it
with `make step-03` or `python app.py`.
"""

import json
import os
import threading
import time
from datetime import datetime
from urllib.parse import urlsplit

from flask import Flask, abort, render_template, request
from flask_sock import Sock
from hub import Hub

MAX_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 500
MAX_NAME_CHARS = 40

app = Flask(__name__)
# A frame over 64 KiB closes that one connection with code 1009 (message too big).
app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": MAX_MESSAGE_BYTES}
sock = Sock(app)
# HISTORY: how many messages a newcomer receives first. QUEUE: how many frames a client may fall
# behind before it is dropped (tests make it small). DROP_GRACE: seconds a dropped client has to
# take its close frame before its connection is cut.
hub = Hub(
    history_size=int(os.environ.get("HISTORY", "50")),
    queue_size=int(os.environ.get("QUEUE", "100")),
    drop_grace=float(os.environ.get("DROP_GRACE", "5")),
)
# SEND_BURST: how many messages a page may send in a row; SEND_RATE: how many a second after
# that (0 turns the limit off). A person typing never meets the defaults.
SEND_BURST = int(os.environ.get("SEND_BURST", "10"))
SEND_RATE = float(os.environ.get("SEND_RATE", "5"))
TOO_FAST = (
    f"Slow down: at most {SEND_BURST} messages in a row, then {SEND_RATE:g} a second. "
    "That one was not sent."
)
# Joins come in storms (after a restart every page reconnects at once): the people online count
# goes out at most once per PRESENCE_DELAY seconds, always the latest.
PRESENCE_DELAY = 0.2
online_changed = threading.Event()


@app.get("/")
def index():
    return render_template("index.html", online=len(hub))


@app.before_request
def refuse_cross_site_sockets():
    # Browsers send cookies with a WebSocket handshake from any site and leave the decision to
    # the server: refuse a handshake whose page came from another host. No Origin at all means
    # no browser page (a script or a bench), which could claim any origin anyway.
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        abort(403)


@sock.route("/chatroom")
def chatroom(ws):
    client = hub.join(ws)
    online_changed.set()
    limit = SendLimit(SEND_BURST, SEND_RATE)
    alert = None  # what this page's alert shows
    try:
        # This thread is the only reader of the socket, the client's writer thread its only
        # writer. receive() waits at most a second (see step 01: a too-big message closes the
        # connection without waking it). A client the hub dropped is done too: hub.leave()
        # gives it DROP_GRACE seconds to take its close frame, then cuts the connection.
        while ws.connected and client in hub:
            frame = ws.receive(timeout=1)
            if frame is None:
                continue
            if not limit.allow():  # every frame counts, good or bad
                # Said once per flood: an answer to every frame would fill the sender's outbox.
                if alert != TOO_FAST:
                    alert = TOO_FAST
                    hub.send(client, render_template("_error.html", error=alert))
                continue
            name, text, error = read_message(frame)
            if error or alert:  # a new alert, or clearing the last one: this one is fine
                alert = error
                hub.send(client, render_template("_error.html", error=alert))
            if error:
                continue
            message = {"name": name, "text": text, "at": datetime.now().astimezone()}
            hub.broadcast(
                render_template("_new_message.html", message=message),
                remember=render_template("_message.html", message=message),
            )
    finally:
        hub.leave(client)
        online_changed.set()


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


def read_message(frame):
    """Return (name, text, None) for a good frame, or (None, None, what is wrong with it)."""
    try:
        fields = json.loads(frame)
    except ValueError:
        return None, None, "That was not a chat message (the frame is not JSON)."
    if not isinstance(fields, dict) or not isinstance(fields.get("chat_message"), str):
        return None, None, "That was not a chat message (it has no chat_message field)."
    text = fields["chat_message"].strip()
    name = fields.get("name")
    name = name.strip() if isinstance(name, str) else ""
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


def announce_online():
    """Send the latest count to every page when it changed, at most once per PRESENCE_DELAY.

    One broadcast per join would cost N² frames for N joins: 500 pages reconnecting after a
    restart would be sent 125,000 counts. Coalesced, they cost a few broadcasts.
    """
    while True:
        online_changed.wait()
        online_changed.clear()  # before counting: a change from now on is announced next time
        with app.app_context():
            hub.broadcast(render_template("_online.html", online=len(hub)))
        time.sleep(PRESENCE_DELAY)


# One announcer for the whole room, waiting from the start for the first page.
threading.Thread(target=announce_online, daemon=True).start()

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
