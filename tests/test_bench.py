"""The bench (`make bench`), run small so that it cannot rot unnoticed: bench/run.py starts each
server as the bench does, bench/loadgen.py drives it, and the figures must add up."""

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


def mode(name: str) -> tuple:
    return next(mode for mode in bench.MODES if mode[0].startswith(name))


def in_own_thread(function, *args, **kwargs):
    """Run it in a thread of its own: Playwright's sync API keeps an event loop running in this
    one once a browser test has run in the session, and asyncio.run refuses to start another."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(function, *args, **kwargs).result()


@pytest.mark.parametrize(
    ("name", "threads_per_page"),
    [("reference", 0), ("03 hub, Werkzeug", 3), ("04 Werkzeug", 3)],
    ids=["reference", "step 03", "step 04 (Engine.IO)"],
)
def test_every_client_receives_every_message_once_with_its_latency(
    tmp_path, name, threads_per_page
):
    # Two load-generator processes of two clients each, as `make bench` spreads 500 clients.
    scenario = {"clients": 4, "messages": 500, "rate": 1000, "per_process": 2}
    result = in_own_thread(bench.measure, mode(name), tmp_path, **scenario)
    assert "error" not in result, result
    assert result["load_processes"] == 2
    assert (result["expected"], result["delivered"]) == (2000, 2000)
    assert (result["lost"], result["duplicates"], result["dropped"]) == (0, 0, 0)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] < 5000
    assert result["cpu_us_per_delivery"] > 0  # what the server spent while the messages flowed
    assert result["peak_rss_mb"] > 10  # a Python process with its libraries loaded
    assert result["peak_threads"] >= threads_per_page * scenario["clients"]


def test_a_frozen_client_stalls_the_naive_loop_and_not_the_hub(tmp_path):
    # The bench's scenario, smaller: 1800 messages that step 03 escapes to about 2.2 KB each,
    # more than the kernel buffers for a socket nobody reads (about 2.7 MB here).
    scenario = {**bench.FROZEN, "clients": 2, "messages": 1800, "rate": 300, "drain_timeout": 1}
    with ThreadPoolExecutor(max_workers=2) as threads:  # side by side: half the time
        naive, hub = threads.map(
            lambda name: bench.measure(mode(name), tmp_path, **scenario),
            ["03 naive loop", "03 hub, Werkzeug"],
        )
    assert "error" not in naive and "error" not in hub, (naive, hub)
    assert naive["lost"] > 0 and naive["frozen_dropped"] == 0, naive
    assert hub["lost"] == 0 and hub["frozen_dropped"] == 1, hub


def test_the_bench_counts_lost_and_duplicated_messages():
    async def scenario():
        # A faulty broadcaster: it drops every third message and sends every fifth one twice.
        clients = set()

        async def faulty(ws):
            clients.add(ws)
            async for frame in ws:
                text = json.loads(frame)["chat_message"]
                seq = int(text.split("seq=")[1].split()[0])
                for _ in range(0 if seq % 3 == 0 else 2 if seq % 5 == 0 else 1):
                    for client in list(clients):
                        await client.send(f"<li>{text}</li>")

        async with serve(faulty, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            # One client in each of two processes: their counts add up.
            return await loadgen.run(
                f"ws://127.0.0.1:{port}/", clients=2, messages=15, rate=100, per_process=1,
                drain_timeout=0.5,
            )  # fmt: skip

    result = in_own_thread(asyncio.run, scenario())
    # Of seq 0..14, five are multiples of 3 (lost); 5 and 10 arrive twice at both clients.
    assert result["load_processes"] == 2
    assert (result["expected"], result["delivered"]) == (30, 20)
    assert (result["lost"], result["duplicates"]) == (10, 4)


@pytest.mark.parametrize(
    "url", ["ws://10.0.0.1:5000/chatroom", "ws://192.168.1.2/", "ws://example.com/", "ws://[::2]/"]
)
def test_the_bench_refuses_any_address_that_is_not_loopback(url):
    with pytest.raises(ValueError, match="loopback"):
        in_own_thread(asyncio.run, loadgen.run(url))


def test_the_bench_refuses_unbounded_runs():
    with pytest.raises(ValueError, match="at most"):
        in_own_thread(
            asyncio.run, loadgen.run("ws://127.0.0.1:9/", clients=loadgen.MAX_CLIENTS + 1)
        )
