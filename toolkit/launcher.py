"""Run a step as a learner does, for tests, exercises, the bench and the notebooks.

- `StepServer`: `python steps/<step>/app.py` in a process of its own, on a port of this process's
  range (`free_port`), stopped by its PID; `RedisServer`: a private redis-server.
- `load_step`: a step's app module, imported from its folder (the one place that loads a module
  by path), and `ThreadServer`: an app served by Werkzeug in a thread of this process.
- `wait_until`: for state no event announces.
"""

import importlib.util
import itertools
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from types import ModuleType

import redis
from werkzeug.serving import WSGIRequestHandler, make_server

from toolkit.course import ROOT


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
    """A free port that no other process of this suite hands out. Each pytest-xdist process goes
    round 250 ports of its own, below the ephemeral ports the kernel gives to clients (32768 and
    up). Port 0 would pick one among those: a server restarted on its port could then find it
    taken by another process's new server, and the test would talk to that one. Two checkouts of
    the course (worktrees) testing at once take ranges apart, by a hash of their folder."""
    for _ in range(PORTS_PER_PROCESS):
        port = next(_ports)
        with socket.socket() as probe, suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("every port of this process's range is taken")


PORTS_PER_PROCESS = 250
_checkout = zlib.crc32(str(ROOT).encode()) % 11  # eleven checkouts' worth of ranges: 10000-31999
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")) % 8
_first = 10_000 + PORTS_PER_PROCESS * (8 * _checkout + _worker)
_ports = itertools.cycle(range(_first, _first + PORTS_PER_PROCESS))


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


def chat_server(step: str, folder: Path, **env) -> StepServer:
    """A StepServer of step 07 or 08 with its instance folder in `folder`: a database of its own,
    at `.database`, which people.rows reads."""
    server = StepServer(step, folder, INSTANCE_PATH=folder / "instance", **env)
    server.database = folder / "instance" / "chat.sqlite"
    return server


def start_side_by_side(step: str, count: int, log_dir: Path, **env) -> list[StepServer]:
    """`count` servers of a step with the same settings, started at once to share the wait."""
    servers = [StepServer(step, log_dir, **env) for _ in range(count)]
    with ThreadPoolExecutor() as pool:
        list(pool.map(StepServer.start, servers))
    return servers


class RedisServer:
    """A real redis-server on a free port in `folder`, that saves nothing; stopped by its PID."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def start(self, timeout: float = 10) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise RuntimeError("this needs redis-server: sudo apt-get install redis-server")
        command = [program, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.folder), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        # Redis says when it is ready; a thread keeps reading so that its pipe never fills up.
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in self.process.stdout])
        reader.daemon = True
        reader.start()
        while "Ready to accept connections" not in lines.get(timeout=timeout):
            pass

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self, **options) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, **options)


def load_step(step: str, folder: Path | None = None) -> ModuleType:
    """Import a step's app.py afresh, with the step's own modules (step 03's hub.py, step 07's
    chat.py), from `folder` or where `step_folder` says: two steps loaded in one process each get
    their own modules, and loading a step again gets new ones. The modules are kept in
    sys.modules under `step_<step>.<name>`."""
    folder = folder or step_folder(step)
    own = {path.stem for path in folder.glob("*.py")}
    saved_path, saved = (
        list(sys.path),
        {name: sys.modules.pop(name) for name in own & set(sys.modules)},
    )
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"step_{step}", folder / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # Flask finds templates/ through the module
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
        for name in own & set(sys.modules):
            sys.modules[f"step_{step}.{name}"] = sys.modules.pop(name)
        sys.modules.update(saved)
    return module


class QuietHandler(WSGIRequestHandler):
    """No request log: in a notebook it would bury what the cells print. (Werkzeug also logs a
    spurious "Bad request syntax" when a WebSocket closes.)"""

    def log(self, *args) -> None:
        pass


class ThreadServer:
    """Serve a WSGI app with Werkzeug in a thread of this process, on a free port. `stop()` stops
    accepting; open sockets end when their handlers return."""

    def __init__(self, app):
        self.app = app
        self._server = make_server(
            "127.0.0.1", free_port(), app, threaded=True, request_handler=QuietHandler
        )
        self.port = self._server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
