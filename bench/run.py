"""`make bench`: every server mode under the same load, written to bench/results.md and a plot.

For each server mode and each number of clients, a fresh server process is started on a free
loopback port, bench/loadgen.py drives it, and the process tree is stopped by PID. The reference
server (bench/reference_server.py) runs in the same session, so every figure can be read as a
ratio to it: a shared 2-core machine is noisy, but both sides of a ratio see the same noise.

    python bench/run.py            # the full run: 10, 100 and 500 clients (a few minutes)
    python bench/run.py --quick    # the smoke run: 10 and 50 clients (about a minute)
"""

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import loadgen
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STEP_03 = ROOT / "steps" / "03_chat"
STEP_04 = ROOT / "steps" / "04_socketio_broadcast"

TARGETS_TEXT = """\
step 03 at 100 clients and 10 messages/s: p99 <= 25 ms, none lost; at 500 clients: p99 <= 150 ms,
none lost; server CPU per delivery <= 2x the reference; step 04 (threading) <= 5x the reference;
500 clients connected in <= 1 s; peak RSS at 500 clients <= 250 MB."""


@dataclass
class Mode:
    name: str
    protocol: str
    step: Path | None  # None: the reference server
    server: str  # "python", "gthread" or "gevent"

    def command(self, port: int, clients: int) -> list[str]:
        if self.server == "python":
            app = self.step / "app.py" if self.step else BENCH / "reference_server.py"
            return [sys.executable, str(app)]
        # One worker: the room (its clients, its history) lives in one process's memory.
        worker = ["-k", "gthread", "--threads", str(clients + 16)]
        if self.server == "gevent":
            worker = ["-k", "gevent", "--worker-connections", str(clients + 16)]
        return [
            *(sys.executable, "-m", "gunicorn", *worker, "-w", "1"),
            *("-b", f"127.0.0.1:{port}", "--no-control-socket"),
            *("--chdir", str(self.step), "app:app"),
        ]

    def unavailable(self) -> str | None:
        if self.step and not (self.step / "app.py").exists():
            return f"{self.step.relative_to(ROOT)} does not exist"
        needs = {"gthread": ["gunicorn"], "gevent": ["gunicorn", "gevent"]}.get(self.server, [])
        if self.protocol == "socketio":
            needs.append("aiohttp")
        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        return f"not installed: {', '.join(missing)}" if missing else None


MODES = [
    Mode("reference (asyncio websockets)", "raw", None, "python"),
    Mode("03 Werkzeug threaded (python app.py)", "raw", STEP_03, "python"),
    Mode("03 gunicorn gthread", "raw", STEP_03, "gthread"),
    Mode("03 gunicorn gevent", "raw", STEP_03, "gevent"),
    Mode("04 Werkzeug threading (python app.py)", "socketio", STEP_04, "python"),
    Mode("04 gunicorn gevent", "socketio", STEP_04, "gevent"),
]
REFERENCE = MODES[0].name


@dataclass
class Plan:
    clients: tuple[int, ...]
    messages: int  # sent at RATE per second in every load scenario
    frozen_messages: int  # sent at FROZEN_RATE, large, while one client never reads
    out: Path
    plot: Path


RATE = 10.0
FROZEN_RATE = 150.0
FROZEN_HEALTHY = 5
FULL = Plan((10, 100, 500), 50, 2500, BENCH / "results.md", BENCH / "latency.png")
QUICK = Plan((10, 50), 20, 300, BENCH / "results-quick.md", BENCH / "latency-quick.png")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One server process (and its children, for gunicorn) on a free loopback port."""

    def __init__(self, mode: Mode, clients: int, log_dir: Path):
        self.port = free_port()
        self.log = log_dir / f"{mode.name.split(' (')[0].replace(' ', '-')}-{self.port}.log"
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                mode.command(self.port, clients),
                cwd=mode.step or BENCH,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not self.accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start; see {self.log}")
            time.sleep(0.05)  # polling interval while the port is still closed

    def accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        try:
            processes = [*psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        self.process.kill()
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(timeout=10)
        psutil.wait_procs(processes, timeout=10)


def measure(mode: Mode, log_dir: Path, **scenario) -> dict:
    server = Server(mode, scenario["clients"] + scenario.get("frozen", 0), log_dir)
    path = "/chatroom" if mode.protocol == "raw" else "/"
    try:
        result = asyncio.run(
            asyncio.wait_for(
                loadgen.run(
                    f"ws://127.0.0.1:{server.port}{path}",
                    mode.protocol,
                    server_pid=server.process.pid,
                    **scenario,
                ),
                timeout=120,
            )
        )
        return {**result, "load_average": os.getloadavg()[0]}
    except Exception as error:  # a mode that fails is reported, and the run goes on
        return {"clients": scenario["clients"], "error": f"{type(error).__name__}: {error}"}
    finally:
        server.stop()


def run_all(plan: Plan, log_dir: Path) -> tuple[list[dict], dict[str, str]]:
    rows, skipped = [], {}
    for mode in MODES:
        reason = mode.unavailable()
        if reason:
            skipped[mode.name] = reason
            continue
        for clients in plan.clients:
            print(f"{mode.name}: {clients} clients", flush=True)
            result = measure(mode, log_dir, clients=clients, messages=plan.messages, rate=RATE)
            rows.append({"mode": mode.name, "scenario": "load", **result})
        print(f"{mode.name}: a frozen client", flush=True)
        result = measure(
            mode,
            log_dir,
            clients=FROZEN_HEALTHY,
            messages=plan.frozen_messages,
            rate=FROZEN_RATE,
            size=loadgen.MAX_CHARS,
            frozen=1,
            drain_timeout=10.0,
        )
        rows.append({"mode": mode.name, "scenario": "frozen", **result})
    return rows, skipped


def add_ratios(rows: list[dict]) -> None:
    reference = {
        (row["scenario"], row["clients"]): row
        for row in rows
        if row["mode"] == REFERENCE and "error" not in row
    }
    for row in rows:
        ref = reference.get((row["scenario"], row["clients"]))
        for key in ("cpu_us_per_delivery", "peak_rss_mb", "p99_ms"):
            if ref and key in row and ref.get(key):
                row[f"{key}_ratio"] = row[key] / ref[key]


def fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def dropped_clients(row: dict) -> str:
    """How many clients the server disconnected, and whether the sender was one of them."""
    if "sender_dropped_after" in row:
        return f"{row['dropped']} (the sender, after {row['sender_dropped_after']} messages)"
    return str(row["dropped"])


def ratio(row: dict, key: str) -> str:
    return f" ({row[key + '_ratio']:.1f}x)" if key + "_ratio" in row else ""


def targets(rows: list[dict], plan: Plan) -> list[tuple[str, str, str]]:
    """(target, what was measured, verdict) for every target of the issue."""
    load = {(r["mode"], r["clients"]): r for r in rows if r["scenario"] == "load"}
    modes = sorted({r["mode"] for r in rows}, key=[m.name for m in MODES].index)
    checks = []

    def check(label, mode, clients, measured, ok, why_not=""):
        row = load.get((mode, clients))
        if clients not in plan.clients:
            return  # the quick run has no 100 or 500 clients: write_results says so once
        if row is None or "error" in row:
            error = row["error"] if row else "no result"
            checks.append((label, f"{mode}: {error}", "**missed**"))
        else:
            text, met = measured(row), ok(row)
            verdict = "met" if met else f"**missed**{': ' + why_not(row) if why_not else ''}"
            checks.append((label, f"{mode}: {text}", verdict))

    def overloaded(row):
        reasons = [
            f"load average {row['load_average']:.1f} on {psutil.cpu_count()} cores (the "
            "server's own busy threads count too)",
            f"the load generator used {row['loadgen_cpu_percent']:.0f}% of a core",
        ]
        if row["loadgen_cpu_percent"] > 70:
            reasons.append("so the client side was the bottleneck: a floor, not the server's cost")
        if row["dropped"]:
            reasons.append(f"the server dropped {dropped_clients(row)} clients")
        return ", ".join(reasons)

    def slow_to_connect(row):
        reference = load.get((REFERENCE, row["clients"]))
        if reference and reference.get("connect_s", 0) > 1:
            return (
                f"the reference needed {reference['connect_s']:.2f} s for the same clients: one "
                f"load generator process opening them is the floor here; {overloaded(row)}"
            )
        return overloaded(row)

    for mode in [m for m in modes if m.startswith("03")]:
        for clients, limit in ((100, 25), (500, 150)):
            check(
                f"step 03, {clients} clients: p99 <= {limit} ms, none lost",
                mode,
                clients,
                lambda r: (
                    f"p99 {r['p99_ms']:.1f} ms{ratio(r, 'p99_ms')}, {r['lost']} lost "
                    f"of {r['expected']}"
                ),
                lambda r, limit=limit: r["p99_ms"] <= limit and r["lost"] == 0,
                overloaded,
            )
    cpu_limits = [(m, 2) for m in modes if m.startswith("03")]
    cpu_limits += [(m, 5) for m in modes if m.startswith("04") and "Werkzeug" in m]
    for mode, limit in cpu_limits:
        for clients in plan.clients[-1:]:
            check(
                f"{mode[:2]}: CPU per delivery <= {limit}x the reference ({clients} clients)",
                mode,
                clients,
                lambda r: f"{r['cpu_us_per_delivery']:.0f} us{ratio(r, 'cpu_us_per_delivery')}",
                lambda r, limit=limit: r.get("cpu_us_per_delivery_ratio", math.inf) <= limit,
                overloaded,
            )
    for mode in modes:
        check(
            "500 clients connected in <= 1 s",
            mode,
            500,
            lambda r: f"{r['connect_s']:.2f} s",
            lambda r: r["connect_s"] <= 1,
            slow_to_connect,
        )
        check(
            "peak RSS at 500 clients <= 250 MB",
            mode,
            500,
            lambda r: f"{r['peak_rss_mb']:.0f} MB",
            lambda r: r["peak_rss_mb"] <= 250,
        )
    return checks


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else cpu
    memory = psutil.virtual_memory().total / 2**30
    return [
        f"- Machine: {platform.system()} {platform.release()}, {cpu}, "
        f"{psutil.cpu_count()} logical cores, {memory:.0f} GiB",
        f"- Python {platform.python_version()}; "
        + ", ".join(f"{name} {version(name)}" for name in PACKAGES),
    ]


PACKAGES = [
    "websockets",
    "flask",
    "flask-sock",
    "simple-websocket",
    "werkzeug",
    "flask-socketio",
    "python-socketio",
    "python-engineio",
    "gunicorn",
    "gevent",
    "aiohttp",
]


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def write_results(rows, skipped, plan, started, load_before, load_after, elapsed) -> None:
    lines = [
        "# Bench results",
        "",
        f"Written by `{'make bench-quick' if plan is QUICK else 'make bench'}` "
        f"(bench/run.py) on {started:%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s. "
        "How to read it: [README.md](README.md).",
        "",
        *machine(),
        f"- Load average (1 min) before and after the run: {load_before:.2f} and "
        f"{load_after:.2f} (other work on the machine adds noise; ratios are less affected).",
        f"- Load: one sender, {plan.messages} messages at {RATE:.0f}/s; every client gets every "
        "message. Latency is from the sender's send() to the receiver's parse, on loopback.",
        "",
        f"![latency against clients]({plan.plot.name})",
        "",
        "## Under load",
        "",
        "| server | clients | connect all (s) | p50 ms | p95 ms | p99 ms (x ref) | max ms "
        "| deliveries/s | lost | dup | dropped | CPU us/delivery (x ref) | peak RSS MB (x ref) "
        "| load gen CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for row in rows:
        if row["scenario"] != "load":
            continue
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['clients']} | {row['error']} |")
            continue
        lines.append(
            f"| {row['mode']} | {row['clients']} | {fmt(row['connect_s'], 2)} "
            f"| {fmt(row['p50_ms'])} | {fmt(row['p95_ms'])} "
            f"| {fmt(row['p99_ms'])}{ratio(row, 'p99_ms')} | {fmt(row['max_ms'])} "
            f"| {fmt(row['deliveries_per_s'], 0)} | {row['lost']} | {row['duplicated']} "
            f"| {dropped_clients(row)} "
            f"| {fmt(row['cpu_us_per_delivery'], 0)}{ratio(row, 'cpu_us_per_delivery')} "
            f"| {fmt(row['peak_rss_mb'], 0)}{ratio(row, 'peak_rss_mb')} "
            f"| {fmt(row['loadgen_cpu_percent'], 0)} |"
        )
    lines += [
        "",
        "## A frozen client",
        "",
        f"{FROZEN_HEALTHY} healthy clients and one that never reads (4 KiB receive buffer); "
        f"{plan.frozen_messages} messages of {loadgen.MAX_CHARS} characters at "
        f"{FROZEN_RATE:.0f}/s, about {plan.frozen_messages * 2.2 / 1024:.1f} MB of escaped HTML "
        "for each client (less with Socket.IO, which sends the text as JSON, unescaped).",
        "",
        "| server | healthy deliveries | lost by healthy clients | dup | p99 ms | max ms "
        "| frozen client dropped by the server | peak RSS MB (x ref) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        if row["scenario"] != "frozen":
            continue
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['error']} |")
            continue
        dropped = "yes" if row.get("frozen_dropped") else "no (still connected at the end)"
        lines.append(
            f"| {row['mode']} | {row['delivered']} of {row['expected']} | {row['lost']} "
            f"| {row['duplicated']} | {fmt(row['p99_ms'])} | {fmt(row['max_ms'])} | {dropped} "
            f"| {fmt(row['peak_rss_mb'], 0)}{ratio(row, 'peak_rss_mb')} |"
        )
    lines += ["", "## Targets", "", "From issue 7 (2 cores, loopback):", ""]
    lines += [f"> {line}" for line in TARGETS_TEXT.splitlines()]
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    lines += [
        f"| {label} | {measured} | {verdict} |" for label, measured, verdict in targets(rows, plan)
    ]
    unmeasured = sorted({100, 500} - set(plan.clients))
    if unmeasured:
        lines += ["", f"Targets at {' and '.join(map(str, unmeasured))} clients: run `make bench`."]
    if skipped:
        lines += ["", "## Not measured", ""]
        lines += [f"- {mode}: {reason}" for mode, reason in skipped.items()]
    plan.out.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], plan: Plan) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the PNG only
    from matplotlib import pyplot, ticker

    figure, axes = pyplot.subplots(figsize=(9, 5.5))
    for index, mode in enumerate(m.name for m in MODES):
        points = [
            r for r in rows if r["mode"] == mode and r["scenario"] == "load" and "p99_ms" in r
        ]
        if not points:
            continue
        color = f"C{index}"
        clients = [r["clients"] for r in points]
        axes.plot(clients, [r["p99_ms"] for r in points], "o-", color=color, label=f"{mode} p99")
        axes.plot(clients, [r["p50_ms"] for r in points], "o:", color=color, alpha=0.6)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(plan.clients, [str(n) for n in plan.clients])
    axes.xaxis.set_minor_locator(ticker.NullLocator())
    axes.yaxis.set_major_formatter(ticker.ScalarFormatter())
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("clients (one sender, 10 messages/s, every client gets every message)")
    axes.set_ylabel("latency, ms (solid: p99, dotted: p50)")
    axes.set_title("Broadcast latency against the number of clients (loopback, 2 cores)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(plan.plot, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 clients, fewer messages")
    plan = QUICK if parser.parse_args().quick else FULL
    started, clock = datetime.now(timezone.utc), time.monotonic()
    load_before = os.getloadavg()[0]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))  # kept: the servers' own output
    rows, skipped = run_all(plan, log_dir)
    add_ratios(rows)
    write_results(
        rows, skipped, plan, started, load_before, os.getloadavg()[0], time.monotonic() - clock
    )
    plot(rows, plan)
    plan.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))  # every figure, raw
    print(f"wrote {plan.out.relative_to(ROOT)} (and .json), {plan.plot.relative_to(ROOT)}")
    print(f"the servers' output: {log_dir}")


if __name__ == "__main__":
    main()
