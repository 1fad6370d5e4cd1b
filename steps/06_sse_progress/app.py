"""Step 06: a background job's progress, pushed with Server-Sent Events and resumed without a gap.

"Start a job" posts to /jobs; the job runs in a background thread and publishes an event at each
step. The page follows GET /jobs/<id>/events, a text/event-stream response that htmx 4's hx-sse
extension swaps into the page. Every event has an id, and the job keeps them all: a client that
comes back with Last-Event-ID gets exactly what it missed, then the live events. Plain Flask, no
extra library on the server. Run it with `make step-06` or `python app.py`.

The jobs, their pages and their streams are in jobs.py, a blueprint: this file makes the app and
serves it, as step 09's app.py serves the same blueprint behind nginx. (clock.py is a second, tiny
app, for the notebook's comparison of transports.)
"""

import os

import jobs
from flask import Flask

app = Flask(__name__)
app.register_blueprint(jobs.blueprint)


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
