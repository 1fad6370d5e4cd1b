"""Serve a course step from a notebook: `server = lab.serve("01_echo")`.

The step's app.py is loaded afresh on every call (so a notebook can run twice in one kernel) and
served by Werkzeug in a background thread on a free port, which it prints for your browser.
Step 05 is about separate processes: `lab.run("05_scale_out")` starts `python app.py` as one,
and `lab.redis_server()` a private Redis for them.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
        self.app = self.module.app
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
    """A program in a process of its own, working and logging in `folder`, stopped by its PID."""

    def __init__(self, command: list[str], port: int, env: dict, folder: str):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.folder = Path(folder)
        with (self.folder / "output.log").open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **{key: str(value) for key, value in env.items()}},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not _accepts(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command[0]} did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return (self.folder / "output.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def run(step: str, **env) -> Process:
    """`python steps/<step>/app.py` in a process of its own on a free port, as `make` runs it."""
    port = _free_port()
    server = Process(
        [sys.executable, str(STEPS / step / "app.py")],
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
