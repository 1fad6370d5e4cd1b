"""Step 10's whole stack: step 09's (toolkit/stack.py) and two Celery workers, and the ways the
tests break it: kill the pool process running a job, kill a whole worker (its main process and
its pool), restart Redis (whose append-only file keeps the queue). Every process by its PID.

A job's keys in Redis (steps/10_workers/tasks.py) say which worker runs it and the PID of the
pool process that does.
"""

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from toolkit.launcher import ROOT, wait_until
from toolkit.stack import Stack

WORKERS = ("worker1", "worker2")
STEP = "10_workers"
# The workers' stack in the tests: short steps, a visibility timeout of a few seconds (the
# whole-worker kill waits for it), quick retries.
WORKER_SETTINGS = {
    "JOB_STEP_SECONDS": 0.2,
    "VISIBILITY_TIMEOUT": 4,
    "RETRY_DELAY": 0.2,
    "HEARTBEAT": 0.5,
    "SEND_RATE": 0,
}


class WorkerStack(Stack):
    """Redis, two web servers, two workers and nginx, as `make step-10` runs them."""

    PROCESSES = ("redis", "app1", "app2", *WORKERS, "nginx")

    def __init__(self, folder, step: str = STEP, **env):
        super().__init__(step, folder, **{**WORKER_SETTINGS, **env})

    def __enter__(self):
        """Redis first; then both web servers and both workers at once (each takes seconds to
        import its libraries); then nginx."""
        subprocess.run(["make", "-s", str(self.certificate)], cwd=ROOT, check=True, timeout=60)
        try:
            self.start("redis")
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(self.start, ("app1", "app2", *WORKERS)))
            self.start("nginx")
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self, name: str, timeout: float = 30) -> None:
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
        psutil.wait_procs(processes, timeout=10)
        self.processes.pop(name).wait(timeout=10)  # honcho sees its process gone, and exits
        return killed

    def restart_redis(self) -> None:
        """Stop Redis as systemd would (SIGTERM: it writes its append-only file out and exits), and
        start it again on the same port, with the same files."""
        self.stop("redis")
        self.start("redis")
