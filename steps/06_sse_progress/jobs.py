"""The jobs: start one, follow its progress over Server-Sent Events, come back without a gap.

"Start a job" posts to /jobs; the job runs in a background thread and publishes an event at each
step. The page follows GET /jobs/<id>/events, a text/event-stream response that htmx 4's hx-sse
extension swaps into the page. Every event has an id, and the job keeps them all, in the memory
of this process: a client that comes back with Last-Event-ID gets exactly what it missed, then
the live events. At most MAX_JOBS run at once; the last KEEP_FINISHED finished jobs are kept.
"""

import os
import re
import secrets
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, render_template, request, url_for

# The simulated work: JOB_STEPS steps of JOB_STEP_SECONDS each (the tests make them short).
JOB_STEPS = int(os.environ.get("JOB_STEPS", "20"))
JOB_STEP_SECONDS = float(os.environ.get("JOB_STEP_SECONDS", "0.5"))
# Seconds of silence after which a stream sends a comment line, so a client that left is noticed
# (the write fails) and proxies see traffic.
HEARTBEAT = float(os.environ.get("HEARTBEAT", "15"))
MAX_JOBS = int(os.environ.get("MAX_JOBS", "4"))  # jobs running at once
KEEP_FINISHED = int(os.environ.get("KEEP_FINISHED", "100"))  # finished jobs kept for late readers
RETRY_MS = 1000  # how soon a client comes back after its stream broke

blueprint = Blueprint("jobs", __name__)


class Job:
    """A job and every event it has published, kept so that a stream can resume after any id."""

    def __init__(self, job_id: str, steps: int):
        self.id, self.steps = job_id, steps
        self.events: list[str] = []  # events[n - 1] is the event whose id is n
        self.finished = False
        self.changed = threading.Condition()  # a new event; fine under gevent's monkey-patching

    def publish(self, data: str, name: str | None = None) -> None:
        """Add the next event; `done` is the last."""
        with self.changed:
            self.events.append(sse_event(len(self.events) + 1, data, name))
            self.finished = name == "done"
            self.changed.notify_all()

    def published(self) -> tuple[int, bool]:
        """The id of the job's last event so far (0 for none), and whether it is `done`."""
        with self.changed:
            return len(self.events), self.finished

    def events_after(self, last_id: int, timeout: float) -> tuple[list[str], bool]:
        """The events after `last_id`, waiting up to `timeout` seconds for one; and `finished`."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.events) > last_id, timeout)
            return self.events[last_id:], self.finished


jobs: dict[str, Job] = {}
finished_ids: deque[str] = deque()  # the oldest finished job is forgotten first
jobs_lock = threading.Lock()


@blueprint.get("/")
def jobs_page():
    return render_template("index.html", jobs=[])


@blueprint.before_request
def refuse_cross_site_posts():
    # A page on any site can make the browser POST here; it cannot read the answer, but the job
    # would start all the same. Refuse a POST whose page came from another host. No Origin at all
    # means no browser page (curl, a script), which could claim any origin anyway.
    if request.method != "POST":
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        abort(plain_text(403, "Jobs are started from this site's own page only."))


@blueprint.post("/jobs")
def start_job():
    with jobs_lock:
        if sum(not job.finished for job in jobs.values()) >= MAX_JOBS:
            error = f"{MAX_JOBS} jobs are running, as many as this server runs at once."
            return render_template("_error.html", error=f"{error} Try again when one is done."), 429
        # Random, not 1, 2, 3: after a restart, a new job must not take the id an old page holds.
        job = Job(secrets.token_hex(4), JOB_STEPS)
        jobs[job.id] = job
    threading.Thread(target=run, args=(job, current_app._get_current_object()), daemon=True).start()
    card = render_template("_job.html", job=job) + render_template("_error.html", error=None)
    return card, 201, {"Location": url_for("jobs.job_page", job_id=job.id)}


@blueprint.get("/jobs/<job_id>")
def job_page(job_id):
    """The page with one job on it: open a job in another tab, or after a reload."""
    return render_template("index.html", jobs=[find_job(job_id)])


@blueprint.get("/jobs/<job_id>/events")
def job_events(job_id):
    job = find_job(job_id)
    # The browser sends the id of the last event it received when it reconnects; none at first.
    # (An empty one, which no browser sends, counts as none.)
    last_id = request.headers.get("Last-Event-ID") or "0"
    if not re.fullmatch(r"[0-9]{1,9}", last_id):
        return plain_text(400, "Last-Event-ID must be the id of an event: a whole number.")
    last_id = int(last_id)
    published, finished = job.published()
    if last_id > published:
        reason = f"Last-Event-ID {last_id} was never sent: this job has sent {published} events."
        return plain_text(400, reason)
    if finished and last_id == published:
        return "", 204  # the client has it all: 204 tells an EventSource to stop reconnecting
    # X-Accel-Buffering: no asks a proxy such as nginx to pass each event on at once.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream(job, last_id), content_type="text/event-stream", headers=headers)


def stream(job: Job, last_id: int):
    """Yield the events after `last_id`, then each new one as it comes; end after `done`.

    This generator holds a server thread (a greenlet under gevent) as long as the client stays.
    WSGI says nothing when a client leaves: the next write fails and the server closes the
    generator, so a write must come at least every HEARTBEAT seconds.
    """
    wait = 0.0  # the first look does not wait: the response starts at once
    while True:
        events, finished = job.events_after(last_id, wait)
        last_id += len(events)
        yield "".join(events) or ": heartbeat\n\n"  # a comment line, which clients ignore
        if finished:
            return
        wait = HEARTBEAT


def run(job: Job, app) -> None:
    """The simulated work, in a thread of its own: each step publishes an event, then `done`."""
    with app.app_context():
        for step in range(1, job.steps + 1):
            time.sleep(JOB_STEP_SECONDS)
            job.publish(render_template("_step.html", job=job, step=step))
    job.publish("done", name="done")
    with jobs_lock:
        finished_ids.append(job.id)
        while len(finished_ids) > KEEP_FINISHED:
            del jobs[finished_ids.popleft()]


def sse_event(event_id: int, data: str, name: str | None = None) -> str:
    """One event in the text/event-stream format.

    Every event carries `retry:`, because htmx 4 reads it only from an event with data and a
    resumed stream can start at any event. Each line of the data gets its own `data:` field.
    """
    fields = [f"retry: {RETRY_MS}", f"id: {event_id}"]
    if name:
        fields.append(f"event: {name}")
    fields += [f"data: {line}" for line in re.split(r"\r\n|\r|\n", data)]
    return "\n".join(fields) + "\n\n"


def find_job(job_id: str) -> Job:
    """The job with this id; 404 for a job that is unknown or forgotten."""
    with jobs_lock:
        job = jobs.get(job_id)
    if job is None:
        abort(plain_text(404, "No such job: jobs live in memory, and a restart forgets them."))
    return job


def plain_text(status: int, reason: str) -> Response:
    return Response(reason + "\n", status, content_type="text/plain; charset=utf-8")
