"""What the bench measures, and how: the server modes, the plans, one measurement.

bench/run.py (`make bench`) runs the plans into bench/results.json; tests/test_bench.py runs small
ones to check that the figures add up. Each measurement starts a fresh server on a free loopback
port (launcher.StepServer, which also runs gunicorn and the bench's own servers), drives it with
toolkit/loadgen.py and stops its process tree.
"""

import asyncio
import contextlib
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import psutil

from toolkit import loadgen
from toolkit.launcher import ROOT, StepServer
from toolkit.people import sign_up
from toolkit.stack import Stack
from toolkit.workers import WorkerStack

BENCH = ROOT / "bench"  # the bench's own servers and settings


def python(script: str):
    return lambda clients: [sys.executable, str(BENCH / script)]


def gunicorn(worker: str, step: str):
    # As in the step READMEs, with enough threads (gthread) or greenlets (gevent) for everyone.
    size = "--threads" if worker == "gthread" else "--worker-connections"
    return lambda clients: [
        *(sys.executable, "-m", "gunicorn", "-c", str(BENCH / "gunicorn.conf.py")),
        *("-k", worker, size, str(clients + 16), "--chdir", str(ROOT / "steps" / step), "app:app"),
    ]


# (name, the step whose protocol it speaks, its command for N clients; None: `python app.py`)
MODES = [
    ("reference (asyncio, no framework)", "03_chat", python("reference_server.py")),
    ("03 naive loop (Werkzeug)", "03_chat", python("naive_loop.py")),
    ("03 hub, Werkzeug (python app.py)", "03_chat", None),
    ("03 hub, gunicorn gthread", "03_chat", gunicorn("gthread", "03_chat")),
    ("03 hub, gunicorn gevent", "03_chat", gunicorn("gevent", "03_chat")),
    ("04 Werkzeug (python app.py)", "04_socketio_broadcast", None),
    ("04 gunicorn gevent", "04_socketio_broadcast", gunicorn("gevent", "04_socketio_broadcast")),
]
PLANS = {  # clients, messages at 10 a second, rounds; messages and their rate with a frozen client
    "full": {"clients": (10, 100, 500), "messages": 50, "rounds": 3, "frozen": (2500, 300)},
    "quick": {"clients": (10, 50), "messages": 5, "rounds": 1, "frozen": (1500, 500)},
}
# The frozen client: 5 healthy clients and one that never reads, while messages of 500
# characters (about 2.2 KB once step 03 has escaped them, 3.3 KB in Socket.IO's JSON) overflow
# what the kernel buffers.
FROZEN = {"clients": 5, "frozen": 1, "size": loadgen.MAX_CHARS}
# The flood: 20 listeners, 5,000 frames from one client as fast as it can send them.
FLOOD = {"clients": 20, "frames": 5000}
# The server's environment. The bench's single sender is no abuser: no rate limit (SEND_RATE=0).
NO_LIMIT = {"SEND_RATE": 0}
# The steps' defences, measured on and off in the same run: the rate limit (the steps' defaults,
# or SEND_RATE=0 as before they had it), and the bound on what a client that never reads may hold
# (QUEUE=100, or a QUEUE no run reaches).
DEFENDED = ("03 hub, Werkzeug (python app.py)", "04 Werkzeug (python app.py)")
UNBOUNDED = {**NO_LIMIT, "QUEUE": 10**9}


def experiments(mode: tuple, plan: dict):
    """(scenario, server environment, load generator arguments) of every measurement of a mode."""
    for clients in plan["clients"]:
        yield "load", NO_LIMIT, {"clients": clients, "messages": plan["messages"]}
    messages, rate = plan["frozen"]
    frozen = {**FROZEN, "messages": messages, "rate": rate}
    yield "frozen", NO_LIMIT, frozen
    if mode[0] in DEFENDED:
        yield "frozen", UNBOUNDED, frozen
        yield "flood", {}, FLOOD
        yield "flood", NO_LIMIT, FLOOD


def measure(mode: tuple, log_dir: Path, env: dict = NO_LIMIT, **scenario) -> dict:
    """One fresh server of this mode, with `env` added to its environment, under loadgen.flood
    (if the scenario has `frames`) or loadgen.run."""
    name, step, command = mode
    clients = scenario["clients"] + scenario.get("frozen", 0)
    server = StepServer(step, log_dir, command=command and command(clients), **env)
    url = server.ws_url + ("/" if step.startswith("04") else "/chatroom")
    protocol = "socketio" if step.startswith("04") else "raw"
    try:
        server.start()
        if "frames" in scenario:
            run = loadgen.flood(url, protocol, **scenario)
        else:
            run = loadgen.run(url, protocol, server_pid=server.process.pid, **scenario)
        result = asyncio.run(asyncio.wait_for(run, 300))
    except Exception as error:  # a mode that fails is reported, and the bench goes on
        result = {"clients": scenario["clients"], "error": f"{type(error).__name__}: {error}"}
    finally:
        children = []
        with contextlib.suppress(AttributeError, psutil.NoSuchProcess):  # not started, or gone
            children = psutil.Process(server.process.pid).children()
        server.stop()
        for child in children:  # gunicorn's worker
            child.kill()
    return {"mode": name, "env": env, "load_average": os.getloadavg()[0], **result}


# --- steps 08 and 09: signed-in pages, each joined to a room ---

# (pages, messages, messages a second per room, rooms): "pages" is one room, "general", with
# one sender; "rate" is 20 rooms of 10 pages, a sender in each, the rate limit off (SEND_RATE=0):
# 500 to 4,000 offered a second in all.
PAGE_PLANS = {
    "full": {
        "08": [("pages", pages, 50, 5, 1) for pages in (250, 500, 1000)]
        + [("rate", 200, 100, rate, 20) for rate in (25, 50, 100)],
        "09": [("pages", pages, 50, 5, 1) for pages in (1000, 2000)]
        + [("pages", pages, 20, 1, 1) for pages in (5000, 10_000)]
        + [("rate", 200, 250, rate, 20) for rate in (25, 50, 100, 200)],
    },
    "quick": {
        "08": [("pages", 100, 10, 5, 1)],
        "09": [("pages", 200, 10, 5, 1), ("rate", 100, 40, 20, 10)],
    },
}
PAGES_PER_PROCESS = 1250  # each load process signs in its own account
# A server may limit the connections from one address (nginx's limit_conn): each load process
# spreads its pages over addresses of its own, PAGES_PER_ADDRESS each, 127.0.P.1, 127.0.P.2 ...
# (Linux routes all of 127/8 to the loopback interface).
PAGES_PER_ADDRESS = 100


def signed_in(target: dict, name: str) -> str:
    """Sign up `name` on the step's page, as a browser would: the session's Cookie header."""
    server = SimpleNamespace(url=target["url"])
    if target.get("cafile"):
        server.certificate = target["cafile"]
    return sign_up(server, name).cookie


@contextlib.contextmanager
def step_08(folder: Path):
    """`python app.py`: Werkzeug, a thread per page (and Engine.IO's own)."""
    server = StepServer("08_under_attack", folder, INSTANCE_PATH=folder, **NO_LIMIT)
    with server:
        yield {
            "url": server.url,
            "ws_url": server.ws_url,
            "protocol": "rooms",
            "servers": {"app": server.process.pid},
            "database": folder / "chat.sqlite",
        }


@contextlib.contextmanager
def step_09(folder: Path):
    """The Procfile's four processes, through nginx with TLS, as `make step-09` runs them."""
    with Stack("09_production", folder, **NO_LIMIT) as stack:
        servers = {name: process.pid for name, process in stack.processes.items()}
        yield {
            "url": stack.url,
            "ws_url": f"wss://127.0.0.1:{stack.https_port}",
            "protocol": "rooms",
            "servers": servers,
            "database": stack.database,
            "cafile": str(stack.certificate),
        }


@contextlib.contextmanager
def reference(folder: Path, behind_nginx: bool):
    """The reference server; behind step 09's nginx (its Procfile line and nginx.conf, with both
    app servers at the reference's port). It sends the online count every 0.2 s, as the steps."""
    command = [sys.executable, str(BENCH / "reference_server.py")]
    with StepServer("reference", folder, command=command, COUNT_DELAY=0.2) as server:
        if not behind_nginx:
            yield {
                "url": server.ws_url + "/chatroom",
                "protocol": "raw",
                "servers": {"reference": server.process.pid},
            }
            return
        with behind_step_09_nginx(folder, server) as target:
            yield {**target, "url": target["url"] + "/chatroom", "protocol": "raw"}


@contextlib.contextmanager
def storing_reference(folder: Path):
    """The storing reference (bench/storing_reference.py: step 09's contract and schema on bare
    asyncio, one process) behind step 09's nginx. Nobody signs in: it has one user."""
    command = [sys.executable, str(BENCH / "storing_reference.py")]
    database = folder / "reference.sqlite"
    server = StepServer("storing reference", folder, command=command, DATABASE=database)
    with server, behind_step_09_nginx(folder, server) as target:
        yield {**target, "protocol": "rooms", "database": database, "accounts": False}


@contextlib.contextmanager
def behind_step_09_nginx(folder: Path, server: StepServer):
    """Step 09's nginx (its Procfile line and nginx.conf) with both app servers at `server`."""
    stack = Stack("09_production", folder)
    stack.env.update(APP1_PORT=str(server.port), APP2_PORT=str(server.port))
    subprocess.run(["make", "-s", str(stack.certificate)], cwd=ROOT, check=True, timeout=60)
    try:
        stack.start("nginx")
        yield {
            "url": f"wss://127.0.0.1:{stack.https_port}",
            "cafile": str(stack.certificate),
            "servers": {"nginx": stack.processes["nginx"].pid, "reference": server.process.pid},
        }
    finally:
        stack.__exit__()


# (name, the group it belongs to, how to start it, the scenarios it runs). The references of
# "pages" speak step 03's protocol and store nothing; the storing one speaks step 09's and
# stores every message, for "rate".
PAGE_MODES = [
    ("08 reference (asyncio, no framework)", "08", lambda f: reference(f, False), {"pages"}),
    ("08 Werkzeug (python app.py)", "08", step_08, {"pages", "rate"}),
    ("09 reference behind nginx", "09", lambda folder: reference(folder, True), {"pages"}),
    ("09 storing reference behind nginx", "09", storing_reference, {"rate"}),
    ("09 nginx, 2 gunicorn gevent, Redis", "09", step_09, {"pages", "rate"}),
]


def measure_pages(mode: tuple, log_dir: Path, scenario, clients, messages, rate, rooms) -> dict:
    """A fresh server (or stack) of this mode, `clients` pages over `rooms` rooms, each load
    process signed in to an account of its own and connecting from its own loopback address."""
    name, _, start, _ = mode
    folder = Path(tempfile.mkdtemp(prefix="pages-", dir=log_dir))
    names = [f"bench-{i}" for i in range(rooms)] if rooms > 1 else ["general"]
    processes = -(-clients // PAGES_PER_PROCESS)
    row = {"scenario": scenario, "mode": name, "env": NO_LIMIT, "clients": clients, "rate": rate}
    try:
        with start(folder) as target:
            cafile = target.get("cafile")
            if "database" in target:  # a step: its rooms, and an account per load process
                rooms_of = contextlib.closing(sqlite3.connect(target["database"], timeout=10))
                with rooms_of as database, database:  # public rooms, as schema.sql makes them
                    database.executemany(
                        "INSERT OR IGNORE INTO rooms (name) VALUES (?)", [(n,) for n in names]
                    )
                cookies = [None] * processes  # the storing reference has no accounts
                if target.get("accounts", True):
                    cookies = [signed_in(target, f"bench-{i}") for i in range(processes)]
            else:  # the reference: nobody signs in, and it has one room
                cookies, names = [None] * processes, ["general"]
            addresses = -(-PAGES_PER_PROCESS // PAGES_PER_ADDRESS)
            pages = [
                loadgen.Page(
                    cookie, tuple(f"127.0.{p}.{a}" for a in range(1, addresses + 1)), cafile
                )
                for p, cookie in enumerate(cookies, start=1)
            ]
            run = loadgen.run(
                target.get("ws_url", target["url"]),
                target["protocol"],
                clients,
                messages,
                rate,
                servers=target["servers"],
                pages=pages,
                rooms=tuple(names),
            )
            row.update(asyncio.run(asyncio.wait_for(run, 900)))
    except Exception as error:  # a mode that fails is reported, and the bench goes on
        row["error"] = f"{type(error).__name__}: {error}"
    return {**row, "load_average": os.getloadavg()[0]}


# --- the jobs: step 09's (the production step) in the web servers, step 10's in two workers ---

# (scenario, jobs, steps, seconds a step) per plan. "throughput": jobs whose steps do no work,
# all sent at once by JOB_USERS users: what the machinery costs. "delay": jobs of real steps, each
# followed through nginx: from a step's record in Redis to its event out of nginx.
JOB_PLANS = {
    "full": [("throughput", 200, 10, 0), ("delay", 10, 40, 0.05)],
    "quick": [("throughput", 40, 10, 0), ("delay", 4, 20, 0.05)],
}
JOB_USERS = 10
JOB_MODES = [
    ("09 jobs in the web servers", "09_production"),
    ("10 jobs in two Celery workers", "10_workers"),
]


def job_stack(step: str, folder: Path, steps: int, step_seconds: float):
    """Step 09's stack (the production step), or step 10's with its workers, with no limit that
    a bench would reach."""

    env = {"JOB_STEPS": steps, "JOB_STEP_SECONDS": step_seconds, "PASSWORD_HASH": "scrypt:1024:8:1"}
    env |= {"JOBS_PER_USER": 1000, "MAX_JOBS": 1000, "MAX_QUEUED": 1000, **NO_LIMIT}
    if step == "10_workers":
        return WorkerStack(folder, WORKER_CONCURRENCY=4, **env)
    return Stack(step, folder, **env)


def measure_jobs(mode: tuple, log_dir: Path, scenario: str, jobs: int, steps: int, seconds: float):
    """Start `jobs` jobs at once from JOB_USERS users and watch every job's stream in Redis until
    each is done; for "delay", also read each job's events out of nginx."""
    from toolkit.jobs import start_job_as

    name, step = mode
    row = {
        "scenario": f"jobs {scenario}",
        "mode": name,
        "env": NO_LIMIT,
        "clients": JOB_USERS,  # the users who start the jobs
        "jobs": jobs,
        "steps": steps,
    }
    folder = Path(tempfile.mkdtemp(prefix="jobs-", dir=log_dir))
    try:
        with job_stack(step, folder, steps, seconds) as stack:
            users = [sign_up(stack) for _ in range(JOB_USERS)]
            owners = [users[n % JOB_USERS] for n in range(jobs)]
            recorded, arrived, done = {}, {}, set()
            started = time.monotonic()
            with ThreadPoolExecutor(JOB_USERS) as pool:
                ids = list(pool.map(lambda owner: start_job_as(owner, stack), owners))
            readers = [
                threading.Thread(target=read_events, args=(stack, owner, job, arrived))
                for owner, job in zip(owners, ids, strict=True)
                if scenario == "delay"
            ]
            for reader in readers:
                reader.start()
            # Every job's stream in Redis: when each event appears there, the moment its step
            # ended. What is there already at the first look is not timed (block=None: no wait).
            redis, last = stack.redis(), {f"job:{job}:events": "0-0" for job in ids}
            block = None
            while len(done) < jobs:
                for key, entries in redis.xread(last, block=block) or []:
                    for entry_id, fields in entries:
                        if block:
                            recorded[key.split(":")[1], int(entry_id.split("-")[0])] = (
                                time.monotonic()
                            )
                        last[key] = entry_id
                        if fields["done"] == "1":
                            done.add(key)
                block = 1000
            elapsed = time.monotonic() - started
            for reader in readers:
                reader.join(timeout=30)
            row["jobs_per_s"] = jobs / elapsed
            delays = [1000 * (arrived[key] - recorded[key]) for key in arrived if key in recorded]
            if delays:
                cuts = statistics.quantiles(delays, n=100, method="inclusive")
                row.update(events=len(delays), delay_p50_ms=cuts[49], delay_p99_ms=cuts[98])
    except Exception as error:  # a mode that fails is reported, and the bench goes on
        row["error"] = f"{type(error).__name__}: {error}"
    return {**row, "load_average": os.getloadavg()[0]}


def read_events(stack, user, job, arrived):
    """A job's stream through nginx, as the page reads it: when each event id came out."""
    from toolkit.jobs import https_connection

    connection = https_connection(stack)
    connection.request("GET", f"/jobs/{job}/events", headers={"Cookie": user.cookie})
    response = connection.getresponse()
    text = ""
    while "event: done" not in text:
        chunk = response.read1().decode()
        if not chunk:
            break
        now = time.monotonic()
        for event_id in re.findall(r"^id: (\d+)$", chunk, re.MULTILINE):
            arrived[job, int(event_id)] = now
        text += chunk
    connection.close()
