"""Serve a course step from a notebook: `server = lab.serve("01_echo")`.

The step's app.py is loaded afresh on every call (so a notebook can run twice in one kernel) and
served by Werkzeug in a background thread on a free port, which it prints for your browser.
Step 05 is about separate processes: `lab.run("05_scale_out")` starts `python app.py` as one,
and `lab.redis_server()` a private Redis for them. Step 06's notebook compares four ways to
push a clock in a real Chromium: `pages = await lab.open_clock_pages()`.
"""

import asyncio
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas
from playwright.async_api import async_playwright
from werkzeug.serving import WSGIRequestHandler, make_server

STEPS = Path(__file__).resolve().parent.parent / "steps"


class QuietHandler(WSGIRequestHandler):
    """No request log in the notebook's output: it would bury what the cells print.

    (Werkzeug also logs a spurious "Bad request syntax" when a WebSocket closes.)
    """

    def log(self, *args) -> None:
        pass


class StepServer:
    def __init__(self, step: str, **env):
        os.environ.update({name: str(value) for name, value in env.items()})
        self.module = load_step(step)
        # A step that makes its app in a factory (step 07 on) makes it now, with the environment.
        self.app = getattr(self.module, "create_app", lambda: self.module.app)()
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=QuietHandler
        )
        self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        print(f"Step {step} is serving at {self.url} (open it in your browser)")

    def stop(self) -> None:
        """Stop accepting connections. Open sockets end when their handlers return."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        print(f"Stopped {self.url}")


def serve(step: str, **env) -> StepServer:
    """Serve steps/<step>/app.py; keyword arguments become environment variables first."""
    return StepServer(step, **env)


def load_step(step: str):
    folder = STEPS / step
    # A step may import its own modules (step 03's hub.py), so its folder goes first on the path,
    # and a module left over from another step must not be reused.
    sys.path.insert(0, str(folder))
    try:
        for name in [path.stem for path in folder.glob("*.py")]:
            sys.modules.pop(name, None)
        spec = importlib.util.spec_from_file_location(f"step_{step}", folder / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # Flask finds templates/ through the module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


class Process:
    """A program in a process of its own, working and logging in `folder`, stopped by its PID.

    `kill()` and `start()` restart it on the same port; `stop()` also removes its folder.
    """

    def __init__(self, command: list[str], port: int, env: dict, folder: str):
        self.command, self.port = command, port
        self.env = {**os.environ, **{key: str(value) for key, value in env.items()}}
        self.url = f"http://127.0.0.1:{port}/"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.folder = Path(folder)
        self.start()

    def start(self) -> float:
        """Start the program; return the time (time.time()) it accepts connections."""
        with (self.folder / "output.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.command[0]} did not start:\n{self.log()}")
            time.sleep(0.02)
        return time.time()

    def log(self) -> str:
        return (self.folder / "output.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def run(step: str, script: str = "app.py", **env) -> Process:
    """`python steps/<step>/<script>` in a process of its own on a free port, as `make` runs it."""
    port = _free_port()
    server = Process(
        [sys.executable, str(STEPS / step / script)],
        port,
        {"HOST": "127.0.0.1", "PORT": port, **env},
        tempfile.mkdtemp(prefix=f"lab-{step}-"),
    )
    print(f"Step {step} is serving at {server.url} (process {server.process.pid})")
    return server


def redis_server() -> Process:
    """A private redis-server on a free port that saves nothing; its URL is `.redis_url`."""
    program = shutil.which("redis-server")
    if program is None:
        raise RuntimeError("Step 05 needs redis-server: sudo apt-get install redis-server")
    port, folder = _free_port(), tempfile.mkdtemp(prefix="lab-redis-")
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder]
    redis = Process([*command, "--save", "", "--appendonly", "no"], port, {}, folder)
    redis.redis_url = f"redis://127.0.0.1:{port}/0"
    print(f"A private Redis answers at {redis.redis_url}")
    return redis


# --- Step 06's notebook: one clock, four transports, in a real Chromium ---

# Each transport: its name, the program that serves it, the page's path, and its settings.
TRANSPORTS = [
    ("short polling", "06_sse_progress", "clock.py", "/poll", {}),
    ("SSE", "06_sse_progress", "clock.py", "/sse", {}),
    ("WebSocket (step 02)", "02_clock", "app.py", "/", {"CLOCK_INTERVAL": 1}),
    ("Socket.IO (step 04)", "04_socketio_broadcast", "app.py", "/", {"CLOCK_INTERVAL": 1}),
]

# Run in each page before its own scripts: note the time (to the microsecond) #clock changed.
WATCH_CLOCK = """
window.__updates = [];
document.addEventListener("DOMContentLoaded", () => {
  let shown = document.getElementById("clock").textContent;
  new MutationObserver(() => {
    const text = document.getElementById("clock").textContent;
    if (text !== shown) {
      shown = text;
      __updates.push([(performance.timeOrigin + performance.now()) / 1000, text]);
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
});
"""


def chromium_path() -> str | None:
    """The Chromium that `make lab` and `make test` found (tests/find-browser.sh puts it in
    CHROMIUM_PATH); without make, that script's answer. None: Playwright's own download."""
    if "CHROMIUM_PATH" not in os.environ:
        find_browser = ["bash", str(STEPS.parent / "tests" / "find-browser.sh"), sys.executable]
        found = subprocess.run(find_browser, capture_output=True, text=True)
        if found.returncode:
            raise RuntimeError(found.stderr)  # what to install
        os.environ["CHROMIUM_PATH"] = found.stdout.strip()
    return os.environ["CHROMIUM_PATH"] or None


def tick_of(shown: str) -> float:
    """clock.py ticks on the whole second: the time a page shows is when it changed."""
    return datetime.strptime(shown, "%Y-%m-%d %H:%M:%S").timestamp()


class Relay:
    """Between the browser and a server: passes every byte on, noting when, which way, how many."""

    def __init__(self, port: int):
        self.port = port
        self.passed = []  # (time, "up" or "down", bytes)
        self.connections = []  # when each TCP connection was opened

    async def start(self) -> None:
        self.listener = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.listener.sockets[0].getsockname()[1]}"

    async def _connect(self, browser_in, browser_out):
        self.connections.append(time.time())
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:  # the server is down: the browser sees its connection closed
            browser_out.close()
            return
        await asyncio.gather(
            self._pipe(browser_in, server_out, "up"), self._pipe(server_in, browser_out, "down")
        )

    async def _pipe(self, source, sink, direction):
        try:
            while data := await source.read(65536):
                self.passed.append((time.time(), direction, len(data)))
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.listener.close()


class ClockPage:
    """One transport: its server in a process, the relay in front of it, its page in Chromium."""

    def __init__(self, name, step, script, path, env):
        self.name, self.step, self.script, self.path, self.env = name, step, script, path, env
        self.requests = []  # when the page made each request (a WebSocket counts as one)

    async def open(self, browser) -> None:
        self.server = await asyncio.to_thread(run, self.step, self.script, **self.env)
        self.relay = Relay(self.server.port)
        await self.relay.start()
        self.page = await browser.new_page()
        self.page.on("request", lambda request: self.requests.append(time.time()))
        self.page.on("websocket", lambda websocket: self.requests.append(time.time()))
        await self.page.add_init_script(WATCH_CLOCK)
        await self.page.goto(self.relay.url + self.path)

    async def updates(self) -> list[tuple[float, str]]:
        """(when, time shown) for every change of the page's clock so far."""
        return await self.page.evaluate("window.__updates")

    async def wait_for_updates(self, count: int) -> None:
        await self.page.wait_for_function(f"window.__updates.length >= {count}", timeout=30_000)

    async def wait_for_more(self, count: int) -> None:
        await self.wait_for_updates(len(await self.updates()) + count)

    async def figures(self, start: float, end: float) -> dict:
        """What this transport cost between `start` and `end` (see the notebook)."""
        updates = [(t, shown) for t, shown in await self.updates() if start < t <= end]
        passed = [(t, way, size) for t, way, size in self.relay.passed if start < t <= end]
        # For each update, the last bytes the server sent before it (maybe before `start`).
        sent = [t for t, way, _ in self.relay.passed if way == "down"]
        by_relay = [t - max(s for s in sent if s <= t) for t, _ in updates]
        by_tick = [t - tick_of(shown) for t, shown in updates]
        delays = by_tick if self.script == "clock.py" else by_relay
        return {
            "transport": self.name,
            "updates": len(updates),
            "requests": sum(start < t <= end for t in self.requests),
            "TCP connections": sum(start < t <= end for t in self.relay.connections),
            **{
                f"bytes {way} per update": sum(size for _, w, size in passed if w == way)
                / len(updates)
                for way in ("up", "down")
            },
            "delay median (ms)": 1000 * statistics.median(delays),
            "delay max (ms)": 1000 * max(delays),
            "delay from the relay, median (ms)": 1000 * statistics.median(by_relay),
        }

    async def restart(self, down: float) -> dict:
        """Kill the server, keep it down for `down` seconds, start it again on the same port."""
        before = len(await self.updates())
        killed = time.time()
        self.server.kill()
        await asyncio.sleep(down)
        back = await asyncio.to_thread(self.server.start)
        await self.wait_for_updates(before + 1)
        # Request times are taken here, when Playwright reports them, which may be after the page
        # has shown the update: count up to now, not up to the update's time in the page.
        seen = time.time()
        first = (await self.updates())[before][0]
        return {
            "transport": self.name,
            "down for (s)": back - killed,
            "clock back after the server (s)": first - back,
            "requests meanwhile": sum(killed < t <= seen for t in self.requests),
        }

    async def close(self) -> None:
        await self.page.close()
        self.relay.close()
        self.server.stop()


class ClockPages:
    """The four transports at once, in one Chromium (Playwright's async API: a notebook's kernel
    runs an event loop already)."""

    async def open(self) -> "ClockPages":
        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(executable_path=chromium_path())
        self.pages = [ClockPage(*transport) for transport in TRANSPORTS]
        await asyncio.gather(*(page.open(self.browser) for page in self.pages))
        await asyncio.gather(*(page.wait_for_updates(1) for page in self.pages))
        return self

    async def measure(self, updates: int) -> pandas.DataFrame:
        """Wait until every page has shown `updates` more times; what each cost meanwhile."""
        start = time.time()
        await asyncio.gather(*(page.wait_for_more(updates) for page in self.pages))
        end = time.time()
        rows = [await page.figures(start, end) for page in self.pages]
        return pandas.DataFrame(rows).set_index("transport").round(1)

    async def restart(self, down: float) -> pandas.DataFrame:
        """Restart every server at once, each down for `down` seconds."""
        rows = await asyncio.gather(*(page.restart(down) for page in self.pages))
        return pandas.DataFrame(rows).set_index("transport").round(1)

    async def close(self) -> None:
        await asyncio.gather(*(page.close() for page in self.pages))
        await self.browser.close()
        await self.playwright.stop()


async def open_clock_pages() -> ClockPages:
    """Serve the clock four ways, each behind a relay, and open the four pages in Chromium."""
    pages = await ClockPages().open()
    print("Four pages open in Chromium, each showing its clock.")
    return pages


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
