"""Step 10's whole stack: step 09's (toolkit/stack.py) and two Celery workers, and the ways the
tests break it: kill the pool process running a job, kill a whole worker (its main process and
its pool), restart Redis (whose append-only file keeps the queue). Every process by its PID.

A job's keys in Redis (steps/10_workers/tasks.py) say which worker runs it and the PID of the
pool process that does.
"""

import os
import re
import signal
import time

import psutil

from toolkit.launcher import wait_until
from toolkit.people import post_form
from toolkit.stack import Stack

WORKERS = ("worker1", "worker2")
STEP = "10_workers"
# The workers' stack in the tests: short steps, a visibility timeout of a few seconds (the
# whole-worker kill waits for it), quick retries.
WORKER_SETTINGS = {
    "JOB_STEP_SECONDS": 0.2,
    "VISIBILITY_TIMEOUT": 60,  # longer than any job of the tests (the whole-worker kill: 4)
    "RETRY_DELAY": 0.2,
    "HEARTBEAT": 0.5,
    "SEND_RATE": 0,
}


class WorkerStack(Stack):
    """Redis, two web servers, two workers and nginx, as `make step-10` runs them."""

    PROCESSES = ("redis", "app1", "app2", *WORKERS, "nginx")

    def __init__(self, folder, step: str = STEP, **env):
        super().__init__(step, folder, **{**WORKER_SETTINGS, **env})

    def start(self, name: str, timeout: float = 60) -> None:
        """A worker has no port: it is started when it says it is ready (Celery's log line)."""
        if name not in WORKERS:
            return super().start(name, timeout)
        ready = self.output(name).count(" ready.") if self.log(name).exists() else 0
        self.launch(name)
        wait_until(
            lambda: self._exited(name) or self.output(name).count(" ready.") > ready,
            f"{name} is ready",
            timeout,
        )
        if self._exited(name):
            raise RuntimeError(f"{name} stopped at start:\n{self.output(name)}")

    def job(self, job_id: str) -> dict:
        """The job's hash in Redis: owner, steps, state, the worker and pool process running it."""
        return self.redis().hgetall(f"job:{job_id}")

    def steps_recorded(self, job_id: str) -> list[int]:
        """The step number of each step event in the job's stream, in stream order."""
        entries = self.redis().xrange(f"job:{job_id}:events")
        return [
            int(event.split("<li>Step ")[1].split(" ")[0])
            for _, fields in entries
            if "<li>Step " in (event := fields["event"])
        ]

    def event_ids(self, job_id: str) -> list[int]:
        return [
            int(entry.split("-")[0]) for entry, _ in self.redis().xrange(f"job:{job_id}:events")
        ]

    def running_in(self, job_id: str, after_step: int = 1) -> tuple[str, int]:
        """Wait until a pool process runs the job and has recorded `after_step`; its worker's name
        and its PID."""
        wait_until(
            lambda: int(self.job(job_id).get("step", 0)) >= after_step, f"step {after_step} done"
        )
        info = self.job(job_id)
        return info["worker"], int(info["pid"])

    def kill_pool_process(self, pid: int) -> None:
        """SIGKILL one process of a worker's pool, as the kernel's OOM killer would."""
        os.kill(pid, signal.SIGKILL)

    def kill_worker(self, name: str) -> float:
        """SIGKILL a whole worker: its main process and every process of its pool at once (a
        machine that vanished). Returns the moment, time.monotonic()."""
        honcho = psutil.Process(self.processes[name].pid)
        processes = honcho.children(recursive=True)
        killed = time.monotonic()
        for process in processes:
            process.send_signal(signal.SIGKILL)
        runner = self.processes.pop(name)  # the honcho that ran it, which waits for no one now
        runner.kill()
        runner.wait(timeout=10)
        return killed

    def restart_redis(self) -> None:
        """Stop Redis as systemd would (SIGTERM: it writes its append-only file out and exits), and
        start it again on the same port, with the same files."""
        self.stop("redis")
        self.start("redis")


# --- jobs, over HTTP and on the page ---

STEP_LINE = re.compile(r"^Step (\d+) of (\d+) done by (worker[12])\b")
PICKED_UP = re.compile(r"^Picked up by (worker[12]) after a crash: carries on after step (\d+)$")


def start_job_with(user, stack, **fields) -> str:
    """POST /jobs with the form's fields (fail_at, failures), as its button does; the job's id."""
    response = post_form(user.http, stack, "/jobs", "/jobs", **fields)
    assert response.status_code == 201, response.text
    return response.headers["Location"].rsplit("/", 1)[1]


def follow_job(page, stack, job_id: str):
    """The page of one job (/jobs/<id>), and its card."""
    page.goto(f"{stack.url}/jobs/{job_id}")
    return page.locator("article.job")


def lines_of(card) -> list[str]:
    return card.get_by_role("log").get_by_role("listitem").all_text_contents()


def steps_on(card) -> list[int]:
    """The step number of each step line in the card's log, in page order."""
    return [int(match[1]) for line in lines_of(card) if (match := STEP_LINE.match(line))]


def expect_done(card, steps: int, timeout: float = 30_000) -> None:
    """The card's status says Done, and its log lists each step once, in order (the ids)."""
    from playwright.sync_api import expect  # (the bench uses this module, without Playwright)

    expect(card.get_by_role("status")).to_have_text("Done", timeout=timeout)
    assert steps_on(card) == list(range(1, steps + 1)), lines_of(card)
