"""Exercise 05-01: who.py prints each server's count and the total, from the keys in Redis."""

import os
import subprocess
import sys

import pytest

from toolkit.clients import SocketIOByHand
from toolkit.launcher import start_side_by_side, step_folder, wait_until

STEP = "05_scale_out"


@pytest.fixture
def two_servers(redis_server, tmp_path):
    """Servers A and B of the step, sharing `redis_server`, as the step's own tests start them."""
    servers = start_side_by_side(
        STEP, 2, tmp_path, REDIS_URL=redis_server.url, PRESENCE_INTERVAL=0.2
    )
    yield servers
    for server in servers:
        server.stop()


def who(redis_url):
    return subprocess.run(
        [sys.executable, str(step_folder(STEP) / "who.py")],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_who_py_prints_each_servers_count_and_the_total(redis_server, two_servers):
    server_a, server_b = two_servers
    clients = [SocketIOByHand(server) for server in (server_a, server_a, server_b)]
    expected = [f"127.0.0.1:{server_a.port} 2", f"127.0.0.1:{server_b.port} 1", "total 3"]
    store = redis_server.client()
    # Each server writes its count at its next beat (PRESENCE_INTERVAL is 0.2 s here).
    wait_until(
        lambda: (
            store.mget(f"online:127.0.0.1:{server_a.port}", f"online:127.0.0.1:{server_b.port}")
            == ["2", "1"]
        ),
        "both servers wrote their counts",
    )
    done = who(redis_server.url)
    for client in clients:
        client.close()
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(expected)
