"""Run step 05 as `make step-05` does: two servers that share one Redis, until Ctrl-C.

Uses the Redis at REDIS_URL when one answers there; otherwise starts a private redis-server on
a free port in a temporary folder, and stops it on exit. The servers listen on PORT and PORT+1.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "5000"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
APP = Path(__file__).resolve().parent / "app.py"

NO_REDIS_SERVER = """\
No Redis answers at {url}, and there is no redis-server here to start a private one.
Install Redis, then run this again:
  Debian or Ubuntu:  sudo apt-get install redis-server
  macOS (Homebrew):  brew install redis
Or point REDIS_URL at a Redis you already run: REDIS_URL=redis://host:6379/0 make step-05"""


def main():
    # Ctrl-C and a plain `kill` both stop everything we started, even where our parent shell
    # ignores Ctrl-C for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    processes = []  # everything we started, stopped in reverse order: servers first, Redis last
    exited = threading.Event()  # set when any of them stops by itself
    folder = tempfile.TemporaryDirectory(prefix="step05-redis-")
    try:
        url = REDIS_URL if answers(REDIS_URL) else start_redis(Path(folder.name), processes)
        for port in (PORT, PORT + 1):
            processes.append(start_server(port, url, exited))
        for port in (PORT, PORT + 1):
            wait_until_listening(port, processes)
        print(f"Two servers share {url}: open http://{HOST}:{PORT}/ and http://{HOST}:{PORT + 1}/")
        print("Ctrl-C stops everything.", flush=True)
        exited.wait()
        print("A server stopped by itself; stopping the rest.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the servers and Redis.", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        for process in reversed(processes):
            stop(process)
        folder.cleanup()


def answers(url):
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1, retry=None).ping()
    except redis.RedisError:
        return False


def start_redis(folder, processes):
    """A private redis-server on a free port, in `folder`, saving nothing: the URL to reach it."""
    program = shutil.which("redis-server")
    if program is None:
        sys.exit(NO_REDIS_SERVER.format(url=REDIS_URL))
    port = free_port()
    print(f"No Redis answers at {REDIS_URL}: starting a private one on port {port}.")
    # Loopback only, in the temporary folder, and nothing saved to disk: a Redis for this run.
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no"]
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it after the servers
        )
    processes.append(process)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit("redis-server did not start:\n" + (folder / "redis.log").read_text())
        time.sleep(0.05)
    return url


def start_server(port, url, exited):
    env = {**os.environ, "HOST": HOST, "PORT": str(port), "REDIS_URL": url}
    process = subprocess.Popen(
        [sys.executable, str(APP)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # Each line of its log, marked with its port, so that you can tell the two servers apart.
    threading.Thread(target=relay, args=(process, port, exited), daemon=True).start()
    return process


def relay(process, port, exited):
    for line in process.stdout:
        print(f"[{port}] {line}", end="", flush=True)
    process.wait()
    exited.set()


def wait_until_listening(port, processes):
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                sys.exit(f"The server on port {port} did not start (see its log above).")
            time.sleep(0.05)


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
