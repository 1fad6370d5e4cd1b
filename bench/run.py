"""`make bench`: every server mode under the same load, three times over, into bench/results.json.

Each measurement starts a fresh server on a free loopback port (tests/harness.py's StepServer,
which also runs gunicorn and the bench's own servers), drives it with bench/loadgen.py and stops
its process tree. The rounds are interleaved (every mode once, then again) so that noise from the
rest of the machine spreads over all the modes, the reference included. Two attacks (a
flood, a client that never reads) are measured on steps 03 and 04 with their defence on and off.
notebooks/bench.ipynb turns the file into bench/results.md and its plot.

    python bench/run.py              # 10, 100 and 500 clients, 3 rounds (about 12 minutes)
    python bench/run.py --quick      # 10 and 50 clients, 1 round (about a minute)
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import loadgen
import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
from harness import ROOT, StepServer  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 clients, one round")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
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
    for round_ in range(1, plan["rounds"] + 1):
        for mode in MODES:
            for scenario, env, arguments in experiments(mode, plan):
                print(f"round {round_}: {mode[0]}, {scenario}, {arguments}, env {env}", flush=True)
                result = measure(mode, log_dir, env, **arguments)
                rows.append({"scenario": scenario, "round": round_, **result})
    run.update(seconds=round(time.monotonic() - started), load_average_after=os.getloadavg()[0])
    options.out.write_text(json.dumps({"run": run, "rows": rows}, indent=1) + "\n")
    print(f"wrote {options.out}; the servers' output is in {log_dir}")


if __name__ == "__main__":
    main()
