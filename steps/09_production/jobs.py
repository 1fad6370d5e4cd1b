"""Step 06's jobs, with their events in Redis, so that any app server can stream any job.

Step 06 kept a job's events in the memory of the process that ran it. Behind nginx, the request
for a job's stream may reach the other app server. Here a job writes each event to a Redis
Stream, `job:<id>:events`, under the explicit id `N-0`: event N of the SSE stream is entry `N-0`
in Redis. A stream that resumes after Last-Event-ID k reads from `k-0` on, with XREAD BLOCK,
on whichever server it lands; the job itself runs on the server that started it.

The contract is step 06's (see its README), for the signed-in user who started the job; a POST
carries the form's csrf_token, as every POST of step 08 does, instead of step 06's Origin check.
At most MAX_JOBS run at once on each server, and JOBS_PER_USER of one user's on all servers; a
finished job is kept KEEP_FINISHED seconds. These settings (and JOB_STEPS, JOB_STEP_SECONDS,
HEARTBEAT) are the app's config (app.py), and so is the Redis client (`init_app`).
"""

import re
import secrets
import threading
import time

import redis
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

RETRY_MS = 1000  # how soon a client comes back after its stream broke

blueprint = Blueprint("jobs", __name__)


def init_app(app):
    """Make the app's client for REDIS_URL, for the jobs (it connects at its first command)."""
    # Its own connection pool: a stream waits in XREAD BLOCK for up to HEARTBEAT seconds.
    app.extensions["jobs"] = redis.Redis.from_url(
        app.config["REDIS_URL"],
        socket_timeout=app.config["HEARTBEAT"] + 5,
        socket_connect_timeout=1,
        retry=None,
        decode_responses=True,
    )


def store():
    return current_app.extensions["jobs"]


def lost_after():
    """A running job renews its keys at every step; when the server running it stops, they
    expire this many seconds after its last step, and its pages say that the job was lost."""
    return current_app.config["JOB_STEP_SECONDS"] + 5


class Job:
    """A job's two keys in Redis: its owner and size (`info`), and its events (a stream); and
    its place among its owner's running jobs (`owners_jobs`)."""

    def __init__(self, job_id: str, steps: int, owner: int):
        self.id, self.steps = job_id, steps
        self.info, self.events = f"job:{job_id}", f"job:{job_id}:events"
        self.owners_jobs = owners_jobs(owner)

    def publish(self, event_id: int, data: str, name: str | None = None) -> None:
        """Add event `event_id`; `done` is the last. Renew how long the job is kept."""
        keep = current_app.config["KEEP_FINISHED"] if name == "done" else int(lost_after()) + 1
        with store().pipeline() as pipe:  # one transaction: an event never outlives its job's info
            pipe.xadd(
                self.events,
                {"event": sse_event(event_id, data, name), "done": int(bool(name))},
                id=f"{event_id}-0",
            )
            pipe.expire(self.events, keep)
            pipe.expire(self.info, keep)
            if name == "done":
                pipe.zrem(self.owners_jobs, self.id)
            else:
                pipe.zadd(self.owners_jobs, {self.id: time.time() + lost_after()})
            pipe.execute()

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
        """Whether the job's keys expired: the server running it stopped."""
        return not store().exists(self.info)


def owners_jobs(owner: int) -> str:
    """The key of a user's running jobs: a sorted set, each job scored with the time its server
    must have renewed it by (a job whose server stopped drops out by itself)."""
    return f"jobs_of:{owner}"


def took_a_place(job: Job) -> bool:
    """Put the job among its owner's running jobs, unless they run JOBS_PER_USER already. Added,
    then counted, in one transaction (MULTI): of two requests at once, on two servers, only one
    can take the last place (counting first and adding after, both would)."""
    now = time.time()
    with store().pipeline() as pipe:
        pipe.zremrangebyscore(job.owners_jobs, 0, now)
        pipe.zadd(job.owners_jobs, {job.id: now + lost_after()})
        pipe.zcard(job.owners_jobs)
        *_, running_now = pipe.execute()
    if running_now > current_app.config["JOBS_PER_USER"]:
        store().zrem(job.owners_jobs, job.id)
        return False
    return True


running = set()  # the jobs this server runs now
running_lock = threading.Lock()


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
    if not took_a_place(job):
        per_user = current_app.config["JOBS_PER_USER"]
        error = f"You have {per_user} jobs running, as many as one person runs at once."
        return render_template("_error.html", error=f"{error} Try again when one is done."), 429
    most = current_app.config["MAX_JOBS"]
    with running_lock:
        if len(running) >= most:
            store().zrem(job.owners_jobs, job.id)
            error = f"{most} jobs are running, as many as this server runs at once."
            return render_template("_error.html", error=f"{error} Try again when one is done."), 429
        running.add(job.id)
    try:
        # HSETNX: a job never takes over the keys of another, should an id ever come up twice.
        if not store().hsetnx(job.info, "owner", current_user.id):
            raise redis.RedisError(f"job {job.id} exists already")
        with store().pipeline() as pipe:
            pipe.hset(job.info, "steps", job.steps)
            pipe.expire(job.info, int(lost_after()) + 1)
            pipe.execute()
    except redis.RedisError:
        with running_lock:
            running.discard(job.id)
        raise  # answered with 503, below
    threading.Thread(target=run, args=(job, current_app._get_current_object()), daemon=True).start()
    card = render_template("_job.html", job=job) + render_template("_error.html", error=None)
    return card, 201, {"Location": url_for("jobs.job_page", job_id=job.id)}


@blueprint.get("/jobs/<job_id>")
@login_required
def job_page(job_id):
    """The page with one job on it: open a job in another tab, or after a reload."""
    return render_template("jobs.html", jobs=[find_job(job_id)])


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


def run(job: Job, app) -> None:
    """The simulated work, in a thread of its own: each step publishes an event, then `done`."""
    try:
        with app.app_context():
            for step in range(1, job.steps + 1):
                time.sleep(app.config["JOB_STEP_SECONDS"])
                job.publish(step, render_template("_step.html", job=job, step=step))
            job.publish(job.steps + 1, "done", name="done")
    except redis.RedisError as error:
        app.logger.error("Job %s stopped: Redis does not answer (%s).", job.id, error)
    finally:
        with running_lock:
            running.discard(job.id)


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
    """The current user's job; 404 for a job that is unknown, gone, or someone else's."""
    info = store().hgetall(f"job:{job_id}") if re.fullmatch(r"[0-9a-f]{32}", job_id) else {}
    if not info or info["owner"] != str(current_user.id):
        abort(plain_text(404, "No such job: it finished long ago, or its server stopped."))
    return Job(job_id, int(info["steps"]), current_user.id)


def plain_text(status: int, reason: str) -> Response:
    return Response(reason + "\n", status, content_type="text/plain; charset=utf-8")
