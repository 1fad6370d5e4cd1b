"""The load generator of bench/ (`make bench`), run small so that it cannot rot unnoticed."""

import asyncio
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import ROOT
from websockets.asyncio.server import serve

sys.path.insert(0, str(ROOT / "bench"))
import loadgen
import run as bench

REFERENCE, STEP_03_WERKZEUG = bench.MODES[0], bench.MODES[1]


def run_in_own_loop(coroutine):
    """asyncio.run in a thread of its own: Playwright's sync API keeps a loop running in this one
    once a browser test has run in the session."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def load(server, **scenario):
    url = f"ws://127.0.0.1:{server.port}/chatroom"
    scenario = {"clients": 4, "messages": 10, "rate": 50, **scenario}
    return run_in_own_loop(loadgen.run(url, server_pid=server.process.pid, **scenario))


@pytest.mark.parametrize("mode", [REFERENCE, STEP_03_WERKZEUG], ids=["reference", "step 03"])
def test_every_client_receives_every_message_once_with_its_latency(tmp_path, mode):
    server = bench.Server(mode, clients=5, log_dir=tmp_path)
    try:
        result = load(server, frozen=1, size=loadgen.MAX_CHARS)
    finally:
        server.stop()
    assert "error" not in result, result
    assert (result["expected"], result["delivered"]) == (40, 40)
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] < 5000
    assert result["cpu_us_per_delivery"] >= 0
    assert result["peak_rss_mb"] > 10  # a Python process with its libraries loaded


def test_the_bench_counts_lost_and_duplicated_messages():
    async def scenario():
        # A faulty broadcaster: it drops every third message and sends every fifth one twice.
        clients = set()

        async def faulty(ws):
            clients.add(ws)
            async for frame in ws:
                seq = int(json.loads(frame)["chat_message"].split("seq=")[1].split()[0])
                copies = 0 if seq % 3 == 0 else 2 if seq % 5 == 0 else 1
                for _ in range(copies):
                    for client in list(clients):
                        await client.send(f"<li>{json.loads(frame)['chat_message']}</li>")

        async with serve(faulty, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            return await loadgen.run(
                f"ws://127.0.0.1:{port}/", clients=2, messages=15, rate=100, drain_timeout=0.5
            )

    result = run_in_own_loop(scenario())
    # Of seq 0..14, five are multiples of 3 (lost); 5 and 10 arrive twice at both clients.
    assert (result["expected"], result["delivered"]) == (30, 20)
    assert (result["lost"], result["duplicated"]) == (10, 4)


@pytest.mark.parametrize(
    "url", ["ws://10.0.0.1:5000/chatroom", "ws://192.168.1.2/", "ws://example.com/", "ws://[::2]/"]
)
def test_the_bench_refuses_any_address_that_is_not_loopback(url):
    with pytest.raises(ValueError, match="loopback"):
        run_in_own_loop(loadgen.run(url))


def test_the_bench_refuses_unbounded_runs():
    with pytest.raises(ValueError, match="at most"):
        run_in_own_loop(loadgen.run("ws://127.0.0.1:9/", clients=loadgen.MAX_CLIENTS + 1))
