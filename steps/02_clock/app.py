"""Step 02: a clock the server pushes into an htmx page.

htmx opens a WebSocket to /clock; the server sends an HTML fragment at once and then one every
CLOCK_INTERVAL seconds, and htmx swaps it into the page. No JavaScript is written by hand. The same
socket drives three pages, one per htmx generation (4, 2 and 1), because their attributes differ.
Run it with `make step-02` or `python app.py`.
"""

import os
import threading
from datetime import datetime

from flask import Flask, render_template
from flask_sock import Sock

MAX_MESSAGE_BYTES = 64 * 1024
# Seconds between two pushes; the original article used 5, the tests use a fraction of a second.
CLOCK_INTERVAL = float(os.environ.get("CLOCK_INTERVAL", "5"))

app = Flask(__name__)
# The clock never reads what the browser sends, but it still must not buffer messages of any size.
app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": MAX_MESSAGE_BYTES}
sock = Sock(app)

# Every connection runs in its own thread, so the count of open clocks changes under a lock.
open_clocks = 0
open_clocks_lock = threading.Lock()


@app.get("/")
def index():
    return render_template("index.html", **widgets())


@app.get("/htmx2")
def htmx2():
    return render_template("htmx2.html", **widgets())


@app.get("/htmx1")
def htmx1():
    return render_template("htmx1.html", **widgets())


@app.get("/mismatch")
def mismatch():
    # A teaching page: htmx 4 with the original article's htmx 1 attribute, which htmx 4 ignores.
    return render_template("mismatch.html", **widgets())


@sock.route("/clock")
def clock(ws):
    global open_clocks
    with open_clocks_lock:
        open_clocks += 1
    try:
        while ws.connected:
            ws.send(render_push())
            # The pause between pushes. receive() returns None after one interval, or raises
            # ConnectionClosed (which Flask-Sock swallows) as soon as the browser leaves. When
            # simple-websocket closes the socket itself (a message over the limit, see step 01),
            # `connected` ends the loop after the interval. No loop outlives its page.
            ws.receive(timeout=CLOCK_INTERVAL)
    finally:
        with open_clocks_lock:
            open_clocks -= 1


def now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def clocks_open() -> int:
    """Any Python function can feed a widget: this one reads how many clocks are open."""
    with open_clocks_lock:
        return open_clocks


def widgets() -> dict:
    """What the partials show, for the first page render and for every push alike."""
    return {"now": now(), "clocks_open": clocks_open()}


def render_push() -> str:
    # One message, two out-of-band fragments: each replaces the element with its id.
    values = widgets()
    return render_template("_clock.html", **values) + render_template("_clocks_open.html", **values)


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
