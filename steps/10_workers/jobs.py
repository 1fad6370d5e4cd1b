"""Step 09's jobs, run by Celery workers: the web servers accept a job and stream its events.

POST /jobs writes the job's keys and sends its id to the queue in Redis; a worker runs it
(tasks.py) and appends each event to the Redis Stream `job:<id>:events` under the explicit id
`N-0`, as step 09's web servers did. The stream route is step 09's: whichever server a page
lands on reads from Redis after Last-Event-ID, so neither a web server's nor a worker's restart
loses a job. The web servers never import tasks.py: they send the task by its name.

The contract is step 09's, and a job can be cancelled (POST /jobs/<id>/cancel). At most
MAX_QUEUED jobs wait in the queue, and JOBS_PER_USER of one user's are queued or running at once;
a finished job is kept KEEP_FINISHED seconds. These settings (and JOB_STEPS, HEARTBEAT) are the
app's config (app.py), and so are the Redis client and Celery's (`init_app`).
"""

import re
import secrets
import time

import redis
from celery import Celery
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required

blueprint = Blueprint("jobs", __name__)


def init_app(app):
    """Make the app's clients for REDIS_URL, for the jobs and Celery (each connects at its first
    command)."""
    # Its own connection pool: a stream waits in XREAD BLOCK for up to HEARTBEAT seconds.
    app.extensions["jobs"] = redis.Redis.from_url(
        app.config["REDIS_URL"],
        socket_timeout=app.config["HEARTBEAT"] + 5,
        socket_connect_timeout=1,
        retry=None,
        decode_responses=True,
    )
    # Celery's client only sends: JSON, to the queue the workers read (tasks.py has their side).
    app.extensions["celery"] = Celery("web", broker=app.config["REDIS_URL"], set_as_current=False)
    app.extensions["celery"].conf.update(task_serializer="json", broker_connection_timeout=1)


def store():
    """The app's Redis client for the jobs (`init_app`)."""
    return current_app.extensions["jobs"]


def lost_after():
    """A job's keys are renewed at every step; a job no worker runs (its keys were lost with
    Redis, say) expires this many seconds after its last step, and its pages say it was lost."""
    return current_app.config["JOB_TIMEOUT"]


class Job:
    """A job's two keys in Redis: its owner and size (`info`), and its events (a stream); and
    its place among its owner's running jobs (`owners_jobs`)."""

    def __init__(self, job_id: str, steps: int, owner: int):
        self.id, self.steps = job_id, steps
        self.info, self.events = f"job:{job_id}", f"job:{job_id}:events"
        self.owners_jobs = owners_jobs(owner)

    def published(self) -> tuple[int, bool]:
        """The id of the job's last event so far (0 for none), and whether it is `done`."""
        entries = store().xrevrange(self.events, count=1)
        if not entries:
            return 0, False
        entry_id, fields = entries[0]
        return int(entry_id.split("-")[0]), fields["done"] == "1"

    def events_after(self, last_id: int, timeout: float) -> tuple[list[str], bool]:
        """The events after `last_id`, waiting up to `timeout` seconds for one; and `finished`."""
        # No BLOCK at all for no wait: BLOCK 0 would wait for ever.
        found = store().xread({self.events: f"{last_id}-0"}, block=int(timeout * 1000) or None)
        entries = found[0][1] if found else []
        finished = bool(entries) and entries[-1][1]["done"] == "1"
        return [fields["event"] for _, fields in entries], finished

    def lost(self) -> bool:
        """Whether the job's keys expired: no worker ran it within JOB_TIMEOUT."""
        return not store().exists(self.info)


def owners_jobs(owner: int) -> str:
    """The key of a user's queued and running jobs: a sorted set, each job scored with the time a
    worker must have renewed it by (a job no worker runs drops out by itself)."""
    return f"jobs_of:{owner}"


def took_a_place(places: str, job: Job, most: int) -> bool:
    """Put the job in the sorted set `places` unless it holds `most` already: an owner's jobs, or
    the queue. Added, then counted, in one transaction (MULTI): of two requests at once, on two
    servers, only one can take the last place (counting first and adding after, both would)."""
    now = time.time()
    with store().pipeline() as pipe:
        pipe.zremrangebyscore(places, 0, now)
        pipe.zadd(places, {job.id: now + lost_after()})
        pipe.zcard(places)
        *_, taken = pipe.execute()
    if taken > most:
        store().zrem(places, job.id)
        return False
    return True


def failures_asked():
    """The simulated failure the form may ask for: step `fail_at` fails `failures` times (0: none).
    For the tests, and to watch retries: it fails only this user's own job."""
    values = [request.form.get(name, "") for name in ("fail_at", "failures")]
    return tuple(int(v) if re.fullmatch(r"[0-9]{1,3}", v) else 0 for v in values)


@blueprint.get("/jobs")
@login_required
def jobs_page():
    return render_template("jobs.html", jobs=[])


@blueprint.post("/jobs")
@login_required
def start_job():
    # Random, not 1, 2, 3: after a restart, a new job must not take the id an old page holds;
    # 128 bits, so that no one finds another's job by trying ids.
    job = Job(secrets.token_hex(16), current_app.config["JOB_STEPS"], current_user.id)
    per_user = current_app.config["JOBS_PER_USER"]
    if not took_a_place(job.owners_jobs, job, per_user):
        error = f"You have {per_user} jobs running, as many as one person runs at once."
        return render_template("_error.html", error=f"{error} Try again when one is done."), 429
    most = current_app.config["MAX_QUEUED"]
    if not took_a_place("jobs:queued", job, most):
        store().zrem(job.owners_jobs, job.id)
        error = f"{most} jobs are waiting for a worker, as many as the queue holds."
        return render_template("_error.html", error=f"{error} Try again in a moment."), 429
    fail_at, failures = failures_asked()
    try:
        # HSETNX: a job never takes over the keys of another, should an id ever come up twice.
        if not store().hsetnx(job.info, "owner", current_user.id):
            raise redis.RedisError(f"job {job.id} exists already")
        with store().pipeline() as pipe:
            info = {"steps": job.steps, "state": "queued", "fail_at": fail_at, "failures": failures}
            pipe.hset(job.info, mapping=info)
            pipe.expire(job.info, lost_after())
            pipe.execute()
        # By its name: the web app does not import the worker's code. The job's id is the task's.
        current_app.extensions["celery"].send_task("tasks.run_job", [job.id], task_id=job.id)
    except Exception:
        with store().pipeline() as pipe:
            pipe.zrem(job.owners_jobs, job.id).zrem("jobs:queued", job.id).delete(job.info)
            pipe.execute()
        raise  # Redis away: answered with 503, below
    card = render_template("_job.html", job=job) + render_template("_error.html", error=None)
    return card, 201, {"Location": url_for("jobs.job_page", job_id=job.id)}


@blueprint.get("/jobs/<job_id>")
@login_required
def job_page(job_id):
    """The page with one job on it: open a job in another tab, or after a reload."""
    return render_template("jobs.html", jobs=[find_job(job_id)])


@blueprint.post("/jobs/<job_id>/cancel")
@login_required
def cancel_job(job_id):
    """Ask the worker to stop the job before its next step (202: asked). The request is kept in
    Redis: a worker that takes the job again after a crash sees it too."""
    job = find_job(job_id)
    store().hset(job.info, "cancel", 1)
    return "", 202


@blueprint.get("/jobs/<job_id>/events")
@login_required
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
    # No X-Accel-Buffering header (step 06 sent one for whatever proxy might come): nginx.conf
    # turns buffering off for this location, and such a header would override it either way.
    headers = {"Cache-Control": "no-cache"}
    # stream_with_context: the stream reads the app's Redis client and HEARTBEAT as it goes.
    events = stream_with_context(stream(job, last_id))
    return Response(events, content_type="text/event-stream", headers=headers)


@blueprint.errorhandler(redis.RedisError)
@blueprint.errorhandler(OSError)  # Celery's client, when Redis does not answer
def redis_is_away(error):
    return plain_text(503, "Jobs live in Redis, which does not answer: try again in a moment.")


def stream(job: Job, last_id: int):
    """Yield the events after `last_id`, then each new one as it comes; end after `done`.

    This generator holds a greenlet as long as the client stays, and one Redis connection while
    it waits. WSGI says nothing when a client leaves: the next write fails and the server closes
    the generator, so a write must come at least every HEARTBEAT seconds.
    """
    wait = 0.0  # the first look does not wait: the response starts at once
    while True:
        events, finished = job.events_after(last_id, wait)
        if not events and job.lost():
            return  # the job's server stopped. The reconnect gets 404.
        last_id += len(events)
        yield "".join(events) or ": heartbeat\n\n"  # a comment line, which clients ignore
        if finished:
            return
        wait = current_app.config["HEARTBEAT"]


def find_job(job_id: str) -> Job:
    """The current user's job; 404 for a job that is unknown, gone, or someone else's."""
    info = store().hgetall(f"job:{job_id}") if re.fullmatch(r"[0-9a-f]{32}", job_id) else {}
    if not info or info["owner"] != str(current_user.id):
        abort(plain_text(404, "No such job: it finished long ago, or no worker ran it in time."))
    return Job(job_id, int(info["steps"]), current_user.id)


def plain_text(status: int, reason: str) -> Response:
    return Response(reason + "\n", status, content_type="text/plain; charset=utf-8")
