"""Step 02's clock over plain HTTP, twice: short polling and Server-Sent Events.

The notebook compares the ways to keep a page up to date on one clock that changes once a
second: these two, step 02's WebSocket and step 04's Socket.IO. /poll asks for the time every
second (hx-trigger="every 1s"); /sse follows a text/event-stream that pushes it at every tick.
Both tick on the whole second, so the time a page shows says when it changed on the server.
Run it with `python clock.py` (HOST and PORT as for app.py).
"""

import os
import time
from datetime import datetime

from flask import Flask, Response, render_template, stream_with_context

RETRY_MS = 1000  # as in app.py

app = Flask(__name__)


@app.get("/poll")
def poll_page():
    return render_template("clock.html", transport="poll", now=now())


@app.get("/sse")
def sse_page():
    return render_template("clock.html", transport="sse", now=now())


@app.get("/now")
def current_time():
    return render_template("_clock.html", now=now())


@app.get("/ticks")
def ticks():
    # No id: a clock has nothing to replay, a page that comes back wants the time as it is now.
    # The tick itself is traffic, so a client that left is noticed within a second: no heartbeat.
    def stream():
        while True:
            time.sleep(1 - time.time() % 1)  # until the next whole second
            yield f"retry: {RETRY_MS}\ndata: {render_template('_clock.html', now=now())}\n\n"

    # The generator renders templates after the view has returned: stream_with_context keeps
    # the app and request contexts for it.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(
        stream_with_context(stream()), content_type="text/event-stream", headers=headers
    )


def now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
