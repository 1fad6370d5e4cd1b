"""`make bench`: every server mode under the same load, three times over, into bench/results.json.

Each measurement starts a fresh server on a free loopback port (tests/harness.py's StepServer,
which also runs gunicorn and the bench's own servers), drives it with bench/loadgen.py and stops
its process tree. The rounds are interleaved (every mode once, then again) so that noise from the
rest of the machine spreads over all the modes, the reference included. Two attacks (a
flood, a client that never reads) are measured on steps 03 and 04 with their defence on and off.

Then steps 07 and 08 with signed-in pages, each beside the reference in the same
run: step 07's `python app.py` beside the reference on its own, step 08's whole stack (nginx with
TLS, two app servers, Redis) beside the reference behind the same nginx. One round: a run of
10,000 pages takes minutes. notebooks/bench.ipynb turns the file into bench/results.md.

    python bench/run.py              # 10, 100 and 500 clients, 3 rounds; pages up to 10,000
    python bench/run.py --quick      # 10 and 50 clients, 1 round; 200 pages (about two minutes)
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import loadgen
import psutil
import requests

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
from harness import ROOT, StepServer  # noqa: E402
from stack_08 import Stack  # noqa: E402


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


# --- steps 07 and 08: signed-in pages, each joined to a room ---

# (pages, messages, messages a second per room, rooms): "pages" is one room, "general", with
# one sender; "rate" is 20 rooms of 10 pages, a sender in each, the rate limit off (SEND_RATE=0).
PAGE_PLANS = {
    "full": {
        "07": [("pages", pages, 50, 5, 1) for pages in (250, 500, 1000)]
        + [("rate", 200, 100, rate, 20) for rate in (25, 50, 100)],
        "08": [("pages", pages, 50, 5, 1) for pages in (1000, 2000)]
        + [("pages", pages, 20, 1, 1) for pages in (5000, 10_000)]
        + [("rate", 200, 250, rate, 20) for rate in (25, 50, 100, 150)],
    },
    "quick": {
        "07": [("pages", 100, 10, 5, 1)],
        "08": [("pages", 200, 10, 5, 1), ("rate", 100, 40, 20, 10)],
    },
}
PAGES_PER_PROCESS = 1250  # each load process signs in its own account
# A server may limit the connections from one address (nginx's limit_conn): each load process
# spreads its pages over addresses of its own, PAGES_PER_ADDRESS each, 127.0.P.1, 127.0.P.2 ...
# (Linux routes all of 127/8 to the loopback interface).
PAGES_PER_ADDRESS = 100
PASSWORD = "correct horse"
CSRF_TOKEN = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')


def signed_in(url: str, name: str, cafile: str | None) -> str:
    """Sign up `name` on the step's page, as a browser would: the session's Cookie header."""
    http = requests.Session()
    http.trust_env, http.verify = False, cafile or True
    page = http.get(f"{url}/signup", timeout=30)
    fields = {"csrf_token": CSRF_TOKEN.search(page.text)[1], "username": name, "password": PASSWORD}
    response = http.post(f"{url}/signup", data=fields, headers={"Referer": page.url}, timeout=30)
    if response.url != f"{url}/":
        raise RuntimeError(f"{name} could not sign up: {response.status_code}")
    return "; ".join(f"{key}={value}" for key, value in http.cookies.items())


@contextlib.contextmanager
def step_07(folder: Path):
    """`python app.py`: Werkzeug, a thread per page (and Engine.IO's own)."""
    server = StepServer("07_rooms_and_logins", folder, INSTANCE_PATH=folder, **NO_LIMIT)
    with server:
        yield {
            "url": server.url,
            "ws_url": server.ws_url,
            "protocol": "rooms",
            "servers": {"app": server.process.pid},
            "database": folder / "chat.sqlite",
        }


@contextlib.contextmanager
def step_08(folder: Path):
    """The Procfile's four processes, through nginx with TLS, as `make step-08` runs them."""
    with Stack(folder, **NO_LIMIT) as stack:
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
    """The reference server; behind step 08's nginx (its Procfile line and nginx.conf, with both
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
        stack = Stack(folder)
        stack.env.update(APP1_PORT=str(server.port), APP2_PORT=str(server.port))
        subprocess.run(["make", "-s", str(stack.certificate)], cwd=ROOT, check=True, timeout=60)
        try:
            stack.start("nginx")
            yield {
                "url": f"wss://127.0.0.1:{stack.https_port}/chatroom",
                "protocol": "raw",
                "cafile": str(stack.certificate),
                "servers": {"nginx": stack.processes["nginx"].pid, "reference": server.process.pid},
            }
        finally:
            stack.__exit__()


# (name, the group it belongs to, how to start it)
PAGE_MODES = [
    ("07 reference (asyncio, no framework)", "07", lambda folder: reference(folder, False)),
    ("07 Werkzeug (python app.py)", "07", step_07),
    ("08 reference behind nginx", "08", lambda folder: reference(folder, True)),
    ("08 nginx, 2 gunicorn gevent, Redis", "08", step_08),
]


def measure_pages(mode: tuple, log_dir: Path, scenario, clients, messages, rate, rooms) -> dict:
    """A fresh server (or stack) of this mode, `clients` pages over `rooms` rooms, each load
    process signed in to an account of its own and connecting from its own loopback address."""
    name, _, start = mode
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
                cookies = [signed_in(target["url"], f"bench-{i}", cafile) for i in range(processes)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 clients, one round")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--pages-only", action="store_true", help="steps 07 and 08 only")
    options = parser.parse_args()
    plan = PLANS["quick" if options.quick else "full"]
    messages, rate = plan["frozen"]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))  # kept: the servers' own output
    memory = psutil.virtual_memory().total / 2**30
    run = {
        "plan": "quick" if options.quick else "full",
        **plan,
        "frozen_scenario": {**FROZEN, "messages": messages, "rate": rate},
        "flood_scenario": FLOOD,
        "machine": f"{platform.machine()}, {psutil.cpu_count()} logical cores, {memory:.0f} GiB, "
        f"Python {platform.python_version()}",
        "started": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "load_average_before": os.getloadavg()[0],
    }
    started, rows = time.monotonic(), []
    for round_ in range(1, 0 if options.pages_only else plan["rounds"] + 1):
        for mode in MODES:
            for scenario, env, arguments in experiments(mode, plan):
                print(f"round {round_}: {mode[0]}, {scenario}, {arguments}, env {env}", flush=True)
                result = measure(mode, log_dir, env, **arguments)
                rows.append({"scenario": scenario, "round": round_, **result})
    for group, plans in PAGE_PLANS[run["plan"]].items():
        for scenario, *figures in plans:
            for mode in PAGE_MODES:
                if mode[1] == group and not (scenario == "rate" and "reference" in mode[0]):
                    print(f"{mode[0]}, {scenario}: {figures}", flush=True)
                    rows.append({"round": 1, **measure_pages(mode, log_dir, scenario, *figures)})
    run.update(seconds=round(time.monotonic() - started), load_average_after=os.getloadavg()[0])
    options.out.write_text(json.dumps({"run": run, "rows": rows}, indent=1) + "\n")
    print(f"wrote {options.out}; the servers' output is in {log_dir}")


if __name__ == "__main__":
    main()
