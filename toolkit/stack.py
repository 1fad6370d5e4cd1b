"""Step 09's whole stack: the Procfile's processes, on free ports, as make runs them.

`make step-09` runs every line of the Procfile under one honcho, which stops them all when one
stops. A rolling restart stops one app server and starts it again, as systemd would on a real
host, where each line is a service of its own: so here each line runs under a honcho of its own,
with the environment make gives it. The certificate comes from make's own rule.
"""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from websockets.sync.client import connect as open_websocket

from toolkit.launcher import ROOT, accepts, free_port, step_folder, wait_until

# The shared stack: a short nginx timeout (so the idle test is quick), pings and heartbeats
# well inside it, and jobs that run longer than any test.
SHARED_SETTINGS = {
    "PROXY_READ_TIMEOUT": "2s",
    "PING_INTERVAL": 1,
    "HEARTBEAT": 0.5,
    "JOB_STEPS": 1000,
    "JOB_STEP_SECONDS": 0.2,
    "MAX_JOBS": 50,
    "SEND_RATE": 0,
    "CONNECTIONS_PER_ADDRESS": 40,  # ten pages of one browser need about 30
    "SIGN_INS_PER_MINUTE": 600,  # 10 a second, after a burst of 10
    # A connection that has not signed in is closed after 3 s, not 5: the test of that waits
    # less, and test_one_address_... still has time to open its 41 sockets (0.8 s measured on a
    # busy machine), none of which signs in.
    "SIGN_IN_TIME": 3,
}
TOOLS = ("nginx", "openssl", "redis-server")  # what the stack runs, beside Python
PROCESSES = ("redis", "app1", "app2", "nginx")  # in the order they start
CHANNEL = "flask-socketio"  # where Flask-SocketIO publishes, and every app server listens


class Stack:
    """Redis, two gunicorn app servers and nginx of `step` (or the copy an exercise names, see
    `step_folder`), working in `folder`; https://localhost:PORT/."""

    PROCESSES = PROCESSES  # the Procfile's lines this stack runs, in the order they start

    def __init__(self, step: str, folder: Path, **env):
        self.step = step_folder(step)
        self.folder = folder
        self.instance = folder / "instance"
        self.https_port, self.http_port = free_port(), free_port()
        self.ports = {"redis": free_port(), "app1": free_port(), "app2": free_port()}
        self.ports["nginx"] = self.https_port
        self.url = f"https://localhost:{self.https_port}"
        self.ws_url = f"wss://localhost:{self.https_port}"
        # Redis' password, made by make's own rule, as `make step-09` does.
        password = self.instance / "redis_password"
        subprocess.run(["make", "-s", str(password)], cwd=ROOT, check=True, timeout=60)
        self.redis_url = (
            f"redis://:{password.read_text().strip()}@127.0.0.1:{self.ports['redis']}/0"
        )
        self.database = self.instance / "chat.sqlite"
        self.certificate = self.instance / "localhost.pem"  # self-signed, for localhost
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "INSTANCE_PATH": str(self.instance),
            "HTTPS_PORT": str(self.https_port),
            "HTTP_PORT": str(self.http_port),
            "APP1_PORT": str(self.ports["app1"]),
            "APP2_PORT": str(self.ports["app2"]),
            "REDIS_PORT": str(self.ports["redis"]),
            "REDIS_URL": self.redis_url,
            **{name: str(value) for name, value in env.items()},
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def __enter__(self):
        subprocess.run(["make", "-s", str(self.certificate)], cwd=ROOT, check=True, timeout=60)
        try:
            # Redis first: the app servers connect to it as they boot. They and nginx (which
            # waits for no one: it proxies each request as it comes) then start side by side.
            self.start("redis")
            with ThreadPoolExecutor() as pool:
                list(pool.map(self.start, self.PROCESSES[1:]))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        for name in reversed(self.PROCESSES):  # nginx first, Redis last; all stop at once
            if name in self.processes:
                self.processes[name].send_signal(signal.SIGTERM)
        for name in reversed(self.PROCESSES):
            self.stop(name)

    def start(self, name: str, timeout: float = 60) -> None:
        """Start one line of the Procfile and wait until it serves (an app server: until it also
        listens to Redis). A gunicorn worker boots after its master listens: with several stacks
        starting at once on a busy machine (one per test process), that took over 30 s."""
        self.launch(name)
        wait_until(
            lambda: self._exited(name) or accepts(self.ports[name]), f"{name} listens", timeout
        )
        if self._exited(name):
            raise RuntimeError(f"{name} stopped at start:\n{self.output(name)}")
        if name == "redis" and self._asks_no_password():
            # A Redis started without its password (fix-it 09-05): the apps and the tests
            # then talk to it without one, as anyone on the machine can.
            self.redis_url = f"redis://127.0.0.1:{self.ports['redis']}/0"
            self.env["REDIS_URL"] = self.redis_url
        if name.startswith("app"):
            running = sum(app in self.processes for app in ("app1", "app2"))
            wait_until(lambda: self.subscribers() >= running, f"{name} listens to Redis", timeout)

    def launch(self, name: str) -> None:
        """Start one line of the Procfile under a honcho of its own, its output in its log."""
        with self.log(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "honcho", "start", name],
                cwd=self.step,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, name: str, timeout: float = 30) -> float:
        """Stop one line the way honcho and systemd do (SIGTERM to its processes), wait until it has
        exited, and return how long that took in seconds."""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return 0.0
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # honcho passes it on to the process and its children
        process.wait(timeout=timeout)
        return time.monotonic() - started

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def output(self, name: str) -> str:
        return self.log(name).read_text(errors="replace")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=10)

    def subscribers(self) -> int:
        try:
            return self.redis().pubsub_numsub(CHANNEL)[0][1]
        except redis.ConnectionError:
            return 0

    def _asks_no_password(self) -> bool:
        try:
            return redis.Redis(port=self.ports["redis"], socket_timeout=10).ping()
        except redis.AuthenticationError:
            return False

    def _exited(self, name: str) -> bool:
        return self.processes[name].poll() is not None


def websocket_from(stack: Stack, address: str):
    """An Engine.IO WebSocket through the stack's nginx, from `address` (all of 127/8 is
    loopback): nginx limits the connections of one address."""
    sock = socket.create_connection(("127.0.0.1", stack.https_port), source_address=(address, 0))
    return open_websocket(
        f"wss://localhost:{stack.https_port}/socket.io/?EIO=4&transport=websocket",
        sock=sock,
        ssl=ssl.create_default_context(cafile=stack.certificate),
        server_hostname="localhost",
        close_timeout=0.1,
        legacy=True,
    )
