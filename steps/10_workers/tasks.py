"""The jobs' work, in Celery workers: processes of their own, apart from the web servers.

The Procfile starts two workers (`celery -A tasks worker`), each the main process and a pool of
processes that run the tasks. The web servers send a job's id to Redis (jobs.py); a worker takes
it and runs `run_job`, which appends each finished step to the job's Redis stream, where the web
servers read it (as in step 09). This module never imports the web app: it renders the step
partials with Jinja itself, and tells the user's pages through Flask-SocketIO's write-only
emitter on Redis.

What a crash may do, and what answers it (README, "Nothing lost, nothing twice"):
- `task_acks_late`: the message is acknowledged after the task ends, not when a worker takes it;
- `task_reject_on_worker_lost`: when the pool process running a task dies, its message goes
  back to the queue at once;
- the visibility timeout: a message a dead worker never acknowledged goes back after this long;
- so a job may run again: `run_job` carries on after the last step recorded in its stream, and
  records a step only if it is the next one (`record`), so no step is done or shown twice.
"""

import functools
import os
import re
import time

import redis
from celery import Celery
from flask_socketio import SocketIO
from jinja2 import Environment, FileSystemLoader

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
JOB_STEP_SECONDS = float(os.environ.get("JOB_STEP_SECONDS", "0.5"))
# A failed step is tried again this often in all (3: "retrying, 2 of 3", then "3 of 3"), after
# RETRY_DELAY seconds, then twice that, and so on (backoff).
ATTEMPTS = int(os.environ.get("ATTEMPTS", "3"))
RETRY_DELAY = float(os.environ.get("RETRY_DELAY", "1"))
# Seconds before a message that a worker took and never acknowledged goes back to the queue: it
# must be longer than the longest job (and its retries), or a job still running would be given to
# a second worker. A worker looks for such messages every VISIBILITY_TIMEOUT / 4 seconds.
VISIBILITY_TIMEOUT = int(os.environ.get("VISIBILITY_TIMEOUT", "600"))
KEEP_FINISHED = int(os.environ.get("KEEP_FINISHED", "3600"))  # seconds a finished job is kept
JOB_TIMEOUT = int(os.environ.get("JOB_TIMEOUT", "3600"))  # an unfinished job's keys, renewed
RETRY_MS = 1000  # how soon a client comes back after its stream broke

celery = Celery("tasks", broker=REDIS_URL, backend=REDIS_URL)  # connects at first use
celery.conf.update(
    # JSON only: a message that says it is pickled (which runs code as it loads) is refused.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # a worker holds no job it has not started
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # kombu looks for messages to give back every 10 s, and only at every 10th look: a
        # short timeout needs shorter looks.
        "unacked_restore_interval": max(1, VISIBILITY_TIMEOUT // 4),
        "unacked_restore_throttle": 1,
    },
    result_expires=KEEP_FINISHED,
    broker_connection_retry_on_startup=True,
)


class PassingError(Exception):
    """A step failed for a reason that may pass (a service that did not answer): try again."""


@functools.cache
def redis_client() -> redis.Redis:
    """This process's Redis client (made in each pool process, after the fork)."""
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


@functools.cache
def pages() -> SocketIO:
    """Flask-SocketIO with no app, on the message queue: it can only emit, to every server."""
    return SocketIO(message_queue=REDIS_URL)


@functools.cache
def templates() -> Environment:
    """The step's own templates, rendered as Flask would: autoescaped."""
    folder = os.path.join(os.path.dirname(__file__), "templates")
    return Environment(loader=FileSystemLoader(folder), autoescape=True)


class Job:
    """A job's keys, as jobs.py made them: `info` (a hash) and `events` (a stream)."""

    def __init__(self, job_id: str):
        self.id, self.info, self.events = job_id, f"job:{job_id}", f"job:{job_id}:events"
        fields = redis_client().hgetall(self.info)
        self.owner, self.steps = fields.get("owner"), int(fields.get("steps", 0))
        self.fail_at, self.failures = int(fields.get("fail_at", 0)), int(fields.get("failures", 0))

    def get(self, field: str) -> str | None:
        return redis_client().hget(self.info, field)

    def record(self, line: str, step: int | None = None, status=None, done=False) -> bool:
        """Append one event: `step` done (only if it is the next one), or a line about the job.
        WATCH: if another run of the job changes it meanwhile, look again (Redis says so)."""

        def append(pipe) -> bool:
            last_step, last_event = (int(x or 0) for x in pipe.hmget(self.info, "step", "events"))
            if pipe.hget(self.info, "state") == "done" or (step and step != last_step + 1):
                return False  # done already, or another run recorded it
            step_shown = step or last_step
            data = (
                templates()
                .get_template("_step.html")
                .render(job=self, step=step_shown, line=line, status=status)
            )
            event = last_event + 1
            pipe.multi()
            keep = KEEP_FINISHED if done else JOB_TIMEOUT
            pipe.xadd(self.events, {"event": sse_event(event, data), "done": 0}, id=f"{event}-0")
            pipe.hset(self.info, mapping={"step": step_shown, "events": event})
            if done:
                done_event = {"event": sse_event(event + 1, "done", "done"), "done": 1}
                pipe.xadd(self.events, done_event, id=f"{event + 1}-0")
                pipe.hset(self.info, mapping={"events": event + 1, "state": "done"})
                pipe.zrem(f"jobs_of:{self.owner}", self.id)
            else:
                pipe.zadd(f"jobs_of:{self.owner}", {self.id: time.time() + JOB_TIMEOUT})
            for key in (self.info, self.events):
                pipe.expire(key, keep)
            return True

        return redis_client().transaction(append, self.info, value_from_callable=True)

    def finish(self, line: str, status: str | None, outcome: str, step=None) -> str:
        """The last event (the last step, or why the job ended), then `done`; and a word to every
        open page of the owner."""
        if self.record(line, step, status, done=True):
            event = {"id": self.id, "outcome": outcome}
            pages().emit("job finished", event, to=f"user:{self.owner}")
        return outcome


@celery.task(bind=True, max_retries=ATTEMPTS - 1)
def run_job(self, job_id: str) -> str:
    """Run the job's steps after the last one recorded; each takes JOB_STEP_SECONDS."""
    job = Job(job_id)
    if not job.steps or job.get("state") == "done":
        return "gone"  # expired, or finished by an earlier run
    worker = self.request.hostname.split("@")[0]
    with redis_client().pipeline() as pipe:
        pipe.hget(job.info, "state")
        pipe.hset(job.info, mapping={"state": "running", "worker": worker, "pid": os.getpid()})
        pipe.zrem("jobs:queued", job_id)
        previous, *_ = pipe.execute()
    step = int(job.get("step") or 0)
    if previous == "running":  # the last run stopped without a word: its process died
        job.record(f"Picked up by {worker} after a crash: carries on after step {step}")
    try:
        while step < job.steps:
            if job.get("cancel"):
                cancelled = f"Cancelled after step {step} of {job.steps}"
                return job.finish(cancelled, cancelled, "cancelled")
            time.sleep(JOB_STEP_SECONDS)  # the work of one step
            if step + 1 == job.fail_at and self.request.retries < job.failures:
                raise PassingError(f"step {step + 1} failed (a simulated failure)")
            line = f"Step {step + 1} of {job.steps} done by {worker}"
            if step + 1 == job.steps:
                return job.finish(line, None, "done", step=step + 1)
            job.record(line, step=step + 1)
            step = int(job.get("step"))  # the step this run recorded, or a later one of another's
        return "done"
    except PassingError as error:
        attempt = self.request.retries + 2  # the first attempt is 1, and this is the next one
        if attempt > ATTEMPTS:
            why = f"{error}, {ATTEMPTS} times"
            return job.finish(f"Failed for good: {why}", f"Failed: {why}", "failed")
        job.record(f"{str(error).capitalize()}: retrying, {attempt} of {ATTEMPTS}")
        redis_client().hset(job.info, "state", "retrying")
        raise self.retry(countdown=RETRY_DELAY * 2**self.request.retries) from error
    except Exception as error:  # a bug, say: the job must not stay "running"
        job.finish(f"Failed: {type(error).__name__}", "Failed: an error in the job", "failed")
        raise


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
