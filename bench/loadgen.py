"""The load generator: N chat clients on loopback, one sender at a fixed rate, every delivery timed.

Each message carries a run id, a sequence number and the sender's clock ("run=ab12 seq=17
t=8123.456789"); every client parses them back out of what it receives, so the bench knows the
latency of each delivery, and which messages were lost or arrived twice. Two protocols:

- "raw": step 03's JSON frames on a plain WebSocket (also the reference server's protocol);
- "socketio": step 04's `send message` / `new message` events on Socket.IO.

A "frozen" client opens the socket (after shrinking its receive buffer) and then never reads,
like a browser tab on a stalled laptop: the server's buffers for it fill up, and the bench checks
that the healthy clients lose nothing.

Everything stays on loopback and is bounded: a non-loopback URL is refused, every wait has a
timeout, and the number of clients and messages is capped.

    python bench/loadgen.py ws://127.0.0.1:5000/chatroom --clients 10 --messages 20
"""

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import socket
import time
from urllib.parse import urlsplit

import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

MAX_CLIENTS = 1000
# Handshakes in flight at once. All 500 at the same instant overflow the listen backlog (128 in
# Werkzeug, 100 in asyncio) and the kernel's SYN retry timer (1 s, then 3 s) would be measured.
CONNECTING_AT_ONCE = 64
MAX_MESSAGES = 5000
MAX_CHARS = 500  # steps 03 and 04 refuse longer messages
FILLER = '&<>"'  # escaped by the server to 4-5 characters each: large fragments
STAMP = re.compile(r"run=(\w+) seq=(\d+) t=([\d.]+)")


def loopback_host(url: str) -> str:
    """The URL's host if it is a loopback address; anything else is refused."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"the bench only targets loopback (127.0.0.0/8, ::1), not {host!r}")


class Tally:
    """What one run received: the latency of every first delivery, and the duplicates."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.seen: list[set[int]] = []
        self.latencies: list[float] = []
        self.duplicates = 0
        self.last_frame = time.perf_counter()
        self.last_delivery = 0.0

    def new_client(self) -> int:
        self.seen.append(set())
        return len(self.seen) - 1

    def received(self, client: int, text: str) -> None:
        now = time.perf_counter()
        self.last_frame = now
        for run_id, seq, sent in STAMP.findall(text):
            if run_id != self.run_id:
                continue  # an earlier run's message, replayed from the history
            if int(seq) in self.seen[client]:
                self.duplicates += 1
            else:
                self.seen[client].add(int(seq))
                self.latencies.append(now - float(sent))
                self.last_delivery = now


class RawClient:
    """A chat client on a plain WebSocket: step 03 and the reference server."""

    def __init__(self, url: str, tally: Tally):
        self.url, self.tally = url, tally
        self.index = tally.new_client()
        self.dropped = False  # closed by the server before the end of the run

    async def connect(self, timeout: float) -> None:
        # No compression: the browser would ask for it, but a server that compresses every copy of
        # a broadcast measures zlib rather than push; see bench/README.md.
        self.ws = await connect(
            self.url, open_timeout=timeout, compression=None, ping_interval=None, max_size=None
        )
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        try:
            async for frame in self.ws:
                self.tally.received(self.index, frame)
        except (OSError, ConnectionClosed):
            pass
        self.dropped = True  # the server closed us: what we missed is counted as lost

    async def send(self, text: str) -> None:
        await self.ws.send(json.dumps({"name": f"bench{self.index}", "chat_message": text}))

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


class SocketIOClient:
    """A chat client on Socket.IO (WebSocket transport only): step 04."""

    def __init__(self, url: str, tally: Tally):
        import logging

        import socketio  # only the Socket.IO runs need python-socketio's client and aiohttp

        # Its writer gives up after 30 s with nothing to send (a long connect phase) and logs an
        # error per client; the bench counts what that costs as lost messages instead.
        logging.getLogger("engineio.client").setLevel(logging.CRITICAL)

        self.url, self.tally = url, tally
        self.index = tally.new_client()
        self.dropped = False
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("new message", self.on_message)
        self.sio.on("disconnect", self.on_disconnect)

    async def on_disconnect(self, reason=None) -> None:
        self.dropped = True

    async def on_message(self, message) -> None:
        self.tally.received(self.index, message["text"])

    async def connect(self, timeout: float) -> None:
        base = urlsplit(self.url)._replace(scheme="http", path="").geturl()
        await self.sio.connect(base, transports=["websocket"], wait_timeout=timeout)

    async def send(self, text: str) -> None:
        if self.dropped:
            raise ConnectionError("the server disconnected this Socket.IO client")
        await self.sio.emit("send message", {"username": f"bench{self.index}", "data": text})

    async def close(self) -> None:
        self.sio.handlers["/"].pop("disconnect")  # leaving is not being dropped
        await self.sio.disconnect()


class FrozenClient:
    """Opens the socket with a tiny receive buffer, then never reads again."""

    def __init__(self, url: str, protocol: str):
        self.parts = urlsplit(url)
        self.protocol = protocol

    async def connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)
        await asyncio.wait_for(
            loop.sock_connect(self.sock, (self.parts.hostname, self.parts.port)), timeout
        )
        path = self.parts.path or "/"
        if self.protocol == "socketio":
            path = "/socket.io/?EIO=4&transport=websocket"
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(self.sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
            if not chunk:
                raise ConnectionError("the server closed the frozen client's handshake")
            response += chunk
        status = response.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"no WebSocket upgrade for the frozen client: {status!r}")
        if self.protocol == "socketio":
            await loop.sock_sendall(self.sock, masked_text_frame(b"40"))  # join namespace "/"

    def dropped_by_server(self) -> bool:
        """Whether the server has closed this connection (reads what was buffered, briefly)."""
        self.sock.setblocking(True)
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 2
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(1 << 20):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True  # reset
        return False

    def close(self) -> None:
        self.sock.close()


def masked_text_frame(payload: bytes) -> bytes:
    """A client's WebSocket text frame (clients must mask), for payloads under 126 bytes."""
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def server_tree(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in server_tree(pid):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for process in server_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def message_text(run_id: str, seq: int, size: int) -> str:
    stamp = f"run={run_id} seq={seq} t={time.perf_counter():.6f} "
    return stamp + (FILLER * MAX_CHARS)[: max(0, min(size, MAX_CHARS) - len(stamp))]


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def run(
    url: str,
    protocol: str = "raw",
    clients: int = 10,
    messages: int = 20,
    rate: float = 10.0,
    size: int = 0,
    frozen: int = 0,
    server_pid: int | None = None,
    connect_timeout: float = 30.0,
    drain_timeout: float = 5.0,
) -> dict:
    """Connect `clients` healthy clients (and `frozen` frozen ones), let the first one send
    `messages` messages at `rate` per second, and return the figures of the run."""
    loopback_host(url)
    if not 1 <= clients + frozen <= MAX_CLIENTS or not 1 <= messages <= MAX_MESSAGES:
        raise ValueError(f"at most {MAX_CLIENTS} clients and {MAX_MESSAGES} messages per run")
    if not 0 < rate <= 1000:
        raise ValueError("the rate must be between 0 and 1000 messages per second")
    client_class = {"raw": RawClient, "socketio": SocketIOClient}[protocol]
    tally = Tally(secrets.token_hex(4))
    peak_rss = 0
    sampling = True

    async def sample_rss():
        nonlocal peak_rss
        while sampling and server_pid:
            peak_rss = max(peak_rss, tree_rss_bytes(server_pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample_rss())
    healthy = [client_class(url, tally) for _ in range(clients)]
    stuck = [FrozenClient(url, protocol) for _ in range(frozen)]
    result = {"protocol": protocol, "clients": clients, "frozen": frozen, "rate": rate}
    try:
        # Everyone connects at once, as when a server restarts under a full room.
        started = time.perf_counter()
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def connect_one(client):
            async with gate:
                await client.connect(connect_timeout)

        outcomes = await asyncio.gather(
            *(connect_one(client) for client in healthy + stuck), return_exceptions=True
        )
        result["connect_s"] = time.perf_counter() - started
        failures = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
        result["connect_failures"] = len(failures)
        if failures:
            result["error"] = f"{len(failures)} clients did not connect, e.g. {failures[0]}"
            return result

        # Wait for the join storm (history, online counts) to pass before timing messages.
        settle_deadline = time.perf_counter() + 15
        while time.perf_counter() - tally.last_frame < 0.3:
            if time.perf_counter() > settle_deadline:
                break
            await asyncio.sleep(0.05)

        own_cpu = psutil.Process().cpu_times()
        server_cpu = tree_cpu_seconds(server_pid) if server_pid else math.nan
        first_send = time.perf_counter()
        for seq in range(messages):
            await asyncio.sleep(max(0.0, first_send + seq / rate - time.perf_counter()))
            try:
                await healthy[0].send(message_text(tally.run_id, seq, size))
            except (ConnectionClosed, ConnectionError):
                result["sender_dropped_after"] = seq  # the messages it could not send are lost
                break
        expected = messages * clients
        deadline = time.perf_counter() + drain_timeout
        while len(tally.latencies) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        delivered = len(tally.latencies)
        if server_pid:
            result["cpu_us_per_delivery"] = (
                (tree_cpu_seconds(server_pid) - server_cpu) / max(delivered, 1) * 1e6
            )
        elapsed = time.perf_counter() - first_send
        used = psutil.Process().cpu_times()
        result["loadgen_cpu_percent"] = (
            100 * (used.user + used.system - own_cpu.user - own_cpu.system) / elapsed
        )
        ordered = sorted(tally.latencies)
        result.update(
            sent=messages,
            expected=expected,
            delivered=delivered,
            lost=expected - delivered,
            duplicated=tally.duplicates,
            dropped=sum(client.dropped for client in healthy),
            deliveries_per_s=delivered / max(tally.last_delivery - first_send, 1e-9),
            **{
                f"{name}_ms": percentile(ordered, fraction) * 1000
                for name, fraction in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1)]
            },
        )
        if stuck:
            result["frozen_dropped"] = sum(client.dropped_by_server() for client in stuck)
        return result
    finally:
        for client in stuck:
            client.close()
        await asyncio.gather(
            *(asyncio.wait_for(client.close(), 5) for client in healthy),
            return_exceptions=True,
        )
        sampling = False
        await sampler
        result["peak_rss_mb"] = peak_rss / 2**20 if server_pid else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws://127.0.0.1:PORT/chatroom (loopback only)")
    parser.add_argument("--protocol", choices=["raw", "socketio"], default="raw")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second")
    parser.add_argument("--size", type=int, default=0, help="characters per message (<= 500)")
    parser.add_argument("--frozen", type=int, default=0, help="clients that never read")
    parser.add_argument("--server-pid", type=int, help="measure this process tree's CPU and RSS")
    options = parser.parse_args()
    result = asyncio.run(
        run(
            options.url,
            options.protocol,
            options.clients,
            options.messages,
            options.rate,
            options.size,
            options.frozen,
            options.server_pid,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
