"""Helpers the tests share: run a step as a learner does, and check what a page did."""

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
# How long a page may take to come back after a server restart (ms, for Playwright): the server
# starts in a second or two on a loaded machine, and the client library backs off between tries.
RECONNECT_TIMEOUT = 20_000
XSS = "<img src=x onerror=alert(1)>"  # text that runs a script if a page takes it for HTML


def step_folder(step: str) -> Path:
    """Where a step lives: `steps/<step>`, or the copy an exercise works on, which the environment
    names (`STEP_FOLDER_03_chat=work/03-1`): the same tests then run on that copy."""
    return Path(os.environ.get(f"STEP_FOLDER_{step}", ROOT / "steps" / step)).resolve()


def wait_until(condition, what: str, timeout: float = 10) -> None:
    """Check `condition` every 50 ms until it holds; fail after `timeout` seconds.

    For state no event announces (a port that opens, a thread count that falls).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"after {timeout} s, still not true: {what}"
        time.sleep(0.05)


def path_with_only(folder: Path, *tools: str) -> str:
    """A PATH that holds only these tools (links in `folder`): to test what make says when the
    rest, such as redis-server or nginx, is missing."""
    folder.mkdir()
    for tool in tools:
        (folder / tool).symlink_to(shutil.which(tool))
    return str(folder)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    """A free port that no other test process hands out. Each pytest-xdist process counts up
    through 2,000 ports of its own, below the ephemeral ports the kernel gives to clients (32768
    and up). Port 0 would pick one among those: a server restarted on its port could then find it
    taken by another process's new server, and the test would talk to that one."""
    for port in _ports:
        with socket.socket() as probe, suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("this test process has used all the ports of its range")


_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_ports = iter(range(20_000 + 2_000 * _worker, 22_000 + 2_000 * _worker))


class StepServer:
    """`python steps/<step>/app.py` in a subprocess on a free port, as `make step-NN` runs it.
    `folder` is where the step lives, if not where `step_folder(step)` says.

    Use it as a context manager. `restart()` kills the process and starts it again on the same
    port, which is how the tests check that open pages survive a server restart.
    """

    def __init__(
        self,
        step: str,
        log_dir: Path,
        command: list[str] | None = None,
        folder: Path | None = None,
        **env,
    ):
        self.app = (folder or step_folder(step)) / "app.py"
        # Another server to run instead of `python app.py` (the bench's gunicorn, for example;
        # `step` then names the log only), listening on HOST and PORT from its environment.
        self.command = command or [sys.executable, str(self.app)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log = log_dir / f"{step}-{self.port}.log"
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.env.update({name: str(value) for name, value in env.items()})
        self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def start(self, timeout: float = 15) -> None:
        # Output goes to a file: a pipe that nobody reads fills up and freezes the server.
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._exited_or_accepts, f"{self.command[-1]} accepts connections", timeout)
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.command[-1]} exited at start; its output:\n{self.output()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _exited_or_accepts(self) -> bool:
        return self.process.poll() is not None or accepts(self.port)


@contextmanager
def no_reload(page):
    """Prove that what happens inside the block changes the page in place, without a reload.

    A reload would drop the marker set on `window`, fire another `load` event and start a new
    document. (Counting navigations does not work: htmx 4 calls history.replaceState.)
    """
    page.evaluate("window.__marker = 'first load'")
    loads = []

    def count_load(loaded_page):
        loads.append(loaded_page)

    page.on("load", count_load)
    try:
        yield
    finally:
        page.remove_listener("load", count_load)
    assert page.evaluate("window.__marker") == "first load", "the page was reloaded"
    assert not loads, "a new load event fired"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


class OriginGuard:
    """Record every request or WebSocket a browser context opens outside its page's own origin."""

    def __init__(self, context):
        self.foreign: list[str] = []
        context.on("request", self._on_request)
        context.on("page", lambda page: page.on("websocket", lambda ws: self._check(page, ws.url)))

    def _on_request(self, request):
        # The test's own page.goto is a navigation; everything else the page asked for itself.
        if not request.is_navigation_request():
            self._check(request.frame.page, request.url)

    def _check(self, page, url: str) -> None:
        if urlsplit(url).scheme in ("data", "blob"):
            return
        if origin(url) != origin(page.url):
            self.foreign.append(f"{page.url} fetched {url}")
