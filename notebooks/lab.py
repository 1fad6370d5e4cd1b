"""Serve a course step inside a notebook's kernel: `server = lab.serve("01_echo")`.

The step's app.py is loaded afresh on every call (so a notebook can run twice in one kernel) and
served by Werkzeug in a background thread on a free port, which it prints for your browser.
"""

import importlib.util
import os
import sys
import threading
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
