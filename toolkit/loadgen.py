"""The load generator: N chat clients on loopback, one of them sending at a fixed rate.

Each message carries a run id, a sequence number and the time it was sent (`run=ab12 seq=17
t=8123.456789`, on the clock all processes share); every client finds them in what it receives,
so each delivery is timed and every loss or duplicate counted. The clients are lean: plain
`websockets` frames, and for Socket.IO the Engine.IO v4 packets spoken directly (python-socketio's
own client costs more CPU than the server it would measure). Past `per_process` clients the load
is spread over several processes, and each reports the CPU it used. `flood()` is the
attack instead: one client sends as fast as it can while the others listen.

Steps 07 to 09 (protocol "rooms") are Socket.IO with a signed-in page's cookie and a room to
join: each load process is given its own `Page` (whose cookie, from which loopback address, which
certificate to trust), and with several rooms, one client in each room sends. Each of its
messages asks for the server's answer, as the page does: a message refused (step 09 answers
"busy" past what it can take) is counted as refused, not as lost.

    python -m toolkit.loadgen ws://127.0.0.1:5000/chatroom --clients 100
    python -m toolkit.loadgen ws://127.0.0.1:5000/ --protocol socketio --clients 500
    python -m toolkit.loadgen ws://127.0.0.1:5000/chatroom --clients 20 --flood 5000
"""

import argparse
import asyncio
import contextlib
import ipaddress
import json
import multiprocessing
import re
import secrets
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# 10,000 pages: step 09's goal. The steps refuse messages longer than MAX_CHARS.
MAX_CLIENTS, MAX_MESSAGES, MAX_CHARS = 10_000, 5000, 500
# Handshakes in flight at once, per load process: 500 at the same instant overflow the listen
# backlog (128 in Werkzeug, 100 in asyncio), and we would time the kernel's SYN retry (1 s, 3 s).
CONNECTING_AT_ONCE = 64
# Large on the wire in both protocols: step 03 escapes `"` to 5 bytes and sends the emoji as 4
# bytes of UTF-8; Socket.IO's JSON makes them 2 and 12 bytes.
FILLER = '"\U0001f600'
# The online count: step 03's and the reference's HTML, Socket.IO's `presence` event.
ONLINE = re.compile(r'(?:id="online"[^>]*>|"count":)(\d+)')
ANSWER = re.compile(r"43(\d+)\[(.*)\]", re.DOTALL)  # Socket.IO's acknowledgement: 43, its id, [...]
LATE_MS = 1000  # a delivery later than this counts as late


def loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    with contextlib.suppress(ValueError):
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return
    raise ValueError(f"the bench only targets loopback (127.0.0.0/8, ::1), not {host!r}")


@dataclass(frozen=True)
class Page:
    """How one load process's clients connect to steps 07 to 09: with the session cookie of its
    account, from loopback addresses of its own, taken in turn (nginx limits the connections
    from one address), trusting step 09's self-signed certificate. (Plain data: it goes to the
    helper processes.)"""

    cookie: str | None = None
    sources: tuple = ()
    cafile: str | None = None

    def options(self, client: int) -> dict:
        """What websockets' connect() needs for the process's `client`th client."""
        options = {}
        if self.cookie:
            options["additional_headers"] = {"Cookie": self.cookie}
        if self.sources:
            options["local_addr"] = (self.sources[client % len(self.sources)], 0)
        if self.cafile:
            options["ssl"] = ssl.create_default_context(cafile=self.cafile)
            options["server_hostname"] = "localhost"  # the name in the certificate
        return options


async def open_socket(url: str, protocol: str, room: str | None = None, **options):
    """A connected client; for Socket.IO, one that has joined the namespace "/", and for steps
    07 to 09 ("rooms") the room `room` too."""
    if protocol in ("socketio", "rooms"):
        url = urlsplit(url)._replace(path="/socket.io/", query="EIO=4&transport=websocket").geturl()
    async with asyncio.timeout(60):
        # No compression: browsers ask for it, but a server that compresses every copy of a
        # broadcast would be measuring zlib.
        ws = await connect(url, compression=None, ping_interval=None, proxy=None, **options)
        if protocol in ("socketio", "rooms"):
            await ws.recv()  # the open packet, 0{"sid": ...}
            await ws.send("40")
            # The connect handler's own events (presence, tick) come before the answer, 40{...}.
            while not (answer := await ws.recv()).startswith("40"):
                if answer.startswith("44"):
                    raise ConnectionRefusedError(f"the server refused the client: {answer}")
        if protocol == "rooms":  # join, asking for the acknowledgement 0: 430[{"ok": true}]
            await ws.send("420" + json.dumps(["join", {"room": room}]))
            while not (answer := await ws.recv()).startswith("430"):
                if answer == "2":  # an Engine.IO ping
                    await ws.send("3")
            if "ok" not in answer:
                raise ConnectionRefusedError(f"the server refused the join: {answer}")
    return ws


def chat_frame(protocol: str, run_id: str, seq: int, size: int = 0, room: str = "") -> str:
    """A chat message stamped with the run, its sequence number and the time, filled up to `size`
    characters, framed as the page would send it."""
    text = f"run={run_id} seq={seq} t={time.monotonic():.6f} "
    text += (FILLER * MAX_CHARS)[: max(0, min(size, MAX_CHARS) - len(text))]
    if protocol == "socketio":  # no acknowledgement asked
        return "42" + json.dumps(["send message", {"username": "bench", "data": text}])
    if protocol == "rooms":  # acknowledgement seq + 1 asked (the join's is 0)
        return f"42{seq + 1}" + json.dumps(["send message", {"room": room, "text": text}])
    return json.dumps({"name": "bench", "chat_message": text})


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU time, to the nanosecond where Linux has a CPU clock for the process
    (psutil counts in 10 ms ticks: too coarse for 500 deliveries of a few µs each)."""
    try:
        return time.clock_gettime(~process.pid << 3 | 2)  # Linux's CPUCLOCK_SCHED of that pid
    except (AttributeError, OSError):  # another system
        return sum(process.cpu_times()[:2])


class Group:
    """The clients of one process and what they received: the latency of every first delivery
    (and each client's arrival times by sequence number), the duplicates, how many clients the
    server disconnected, the frames the join storm cost, and when a client first saw the online
    count fall (someone was let go)."""

    def __init__(
        self, url: str, protocol: str, count: int, run_id: str, page=Page(), rooms=("general",)
    ):
        self.url, self.protocol, self.count = url, protocol, count
        self.page, self.rooms = page, rooms  # client i joins rooms[i % len(rooms)]
        self.stamp = re.compile(rf"run={run_id} seq=(\d+) t=([\d.]+)")
        self.sockets, self.readers, self.arrivals, self.failures = [], [], [], []
        self.latencies, self.duplicates, self.dropped = [], 0, 0
        self.frames, self.count_fell_at = 0, None
        self.last_frame, self.closing = time.monotonic(), False
        self.last_arrival = 0.0  # when the last stamped message arrived
        self.senders = {}  # room -> its first client
        self.answers = {}  # (room, seq) -> the server's answer to a message its sender sent
        self.rooms_of = []  # the room of each client, beside its arrivals

    async def join(self, barrier) -> None:
        """Connect every client, let the join storm pass, then wait for the other processes.
        Every process starts connecting at the same moment: one storm, not several."""
        await asyncio.to_thread(barrier.wait, 90)
        gate, started = asyncio.Semaphore(CONNECTING_AT_ONCE), time.monotonic()

        async def one(client, room):
            try:
                async with gate:
                    options = self.page.options(client)
                    ws = await open_socket(self.url, self.protocol, room, max_size=None, **options)
            except Exception as error:  # counted: its messages are lost
                self.failures.append(repr(error))
                return
            self.sockets.append(ws)
            self.senders.setdefault(room, ws)  # the first client in each room sends, if any
            self.arrivals.append(arrivals := {})
            self.rooms_of.append(room)
            self.readers.append(asyncio.create_task(self.read(ws, arrivals, room)))

        rooms = [self.rooms[i % len(self.rooms)] for i in range(self.count)]
        await asyncio.gather(*(one(client, room) for client, room in enumerate(rooms)))
        self.connect_s = time.monotonic() - started
        # Joins change the online count, which the steps send at most every 0.2 s: the storm is
        # over when 0.5 s pass without a frame.
        self.last_frame = max(self.last_frame, time.monotonic())
        while time.monotonic() - self.last_frame < 0.5 and time.monotonic() - started < 60:
            await asyncio.sleep(0.05)
        self.join_frames = self.frames
        await asyncio.to_thread(barrier.wait, 90)
        self.cpu = cpu_seconds(psutil.Process())

    async def read(self, ws, arrivals: dict, room: str | None = None) -> None:
        highest = 0  # the highest online count this client was sent
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                if frame == "2":  # an Engine.IO ping: a client that does not answer is cut
                    await ws.send("3")
                    continue  # (10,000 pages are pinged 400 times a second: no sign of a storm)
                if answer := ANSWER.fullmatch(frame):  # to a message this client sent
                    self.answers[room, int(answer[1]) - 1] = json.loads(answer[2])
                    continue
                now = self.last_frame = time.monotonic()
                self.frames += 1
                for seq, sent in self.stamp.findall(frame):
                    if seq in arrivals:
                        self.duplicates += 1
                    else:
                        arrivals[seq] = self.last_arrival = now
                        self.latencies.append(now - float(sent))
                for count in map(int, ONLINE.findall(frame)):
                    if count < highest and self.count_fell_at is None:
                        self.count_fell_at = now
                    highest = max(highest, count)
        self.dropped += not self.closing  # what it misses from now on counts as lost

    async def received(self, messages: int, deadline: float) -> dict:
        """Wait until every client has every message, or the deadline: the figures."""
        while len(self.latencies) < messages * self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cpu = cpu_seconds(psutil.Process()) - self.cpu
        figures = ("latencies", "duplicates", "dropped", "failures", "connect_s")
        figures += ("join_frames", "count_fell_at", "last_arrival", "answers")
        # What each client received, by room: to count what was lost of the messages taken.
        received = [
            (room, list(got)) for room, got in zip(self.rooms_of, self.arrivals, strict=True)
        ]
        return {"cpu_s": cpu, "received": received, **{n: getattr(self, n) for n in figures}}

    def close(self) -> None:
        self.closing = True
        for ws in self.sockets:
            ws.transport.abort()  # no closing handshake: the server is stopped next anyway


def helper(url, protocol, count, run_id, page, rooms, barrier, messages, seconds, results) -> None:
    """One more load-generator process: its share of the clients, counted on its own."""

    async def take_part():
        group = Group(url, protocol, count, run_id, page, rooms)
        await group.join(barrier)  # the sender starts now
        results.put(await group.received(messages, time.monotonic() + seconds))
        group.close()

    asyncio.run(take_part())


async def frozen_client(url: str, protocol: str):
    """A client that joins with a 4 KiB receive buffer and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    parts = urlsplit(url)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    # max_queue=1: websockets stops reading from the socket as soon as one frame waits.
    return await open_socket(url, protocol, sock=sock, max_queue=1, max_size=None)


async def dropped_by_server(ws) -> bool:
    """Read what is left: a connection the server closed ends, one it kept goes quiet for a
    second. (Megabytes may be left to read first: on a busy machine that takes seconds.)"""
    try:
        while True:
            async with asyncio.timeout(1):
                await ws.recv()
    except TimeoutError:
        return False
    except ConnectionClosed:
        return True


def server_usage(pid: int) -> tuple[float, float, int]:
    """CPU seconds, resident MB and threads of a server and its children (gunicorn's)."""
    cpu = rss = threads = 0
    server = psutil.Process(pid)
    for process in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess), process.oneshot():
            cpu += cpu_seconds(process)
            rss += process.memory_info().rss / 2**20
            threads += process.num_threads()
    return cpu, rss, threads


def usage_of(pids: dict) -> dict:
    """server_usage of each named server (step 09: nginx, app1, app2, redis)."""
    return {name: server_usage(pid) for name, pid in pids.items()}


def total(usage: dict, figure: int) -> float:
    return sum(numbers[figure] for numbers in usage.values())


async def run(
    url: str,
    protocol: str = "raw",
    clients: int = 10,
    messages: int = 20,
    rate: float = 10.0,
    size: int = 0,
    frozen: int = 0,
    server_pid: int | None = None,
    per_process: int = 250,
    drain_timeout: float = 5.0,
    servers: dict | None = None,
    pages: list | None = None,
    rooms: tuple = ("general",),
) -> dict:
    """Connect `clients` clients (and `frozen` frozen ones), let the first send `messages`
    messages at `rate` per second, and return the figures of the run.

    Steps 07 to 09: `pages` gives each load process its Page (as many processes as pages); the
    clients are spread over `rooms`, and the first client in each room sends. `servers` names
    the processes to measure ({"nginx": pid, "app1": pid, ...}) instead of `server_pid`."""
    loopback_only(url)
    if not 1 <= clients + frozen <= MAX_CLIENTS or not 1 <= messages <= MAX_MESSAGES:
        raise ValueError(f"at most {MAX_CLIENTS} clients and {MAX_MESSAGES} messages per run")
    if not 0 < rate <= 1000:
        raise ValueError("the rate must be between 0 and 1000 messages per second")
    servers = servers or ({"server": server_pid} if server_pid else {})
    processes = len(pages) if pages else -(-clients // per_process)
    pages = pages or [Page()] * processes
    run_id = secrets.token_hex(4)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    if shares[0] < len(rooms):
        raise ValueError("the first load process needs a client in every room: its senders")
    context = multiprocessing.get_context("spawn")  # never fork a process that has threads
    barrier, results = context.Barrier(processes), context.Queue()
    # A helper waits for the messages as long as the sender does: while sending, then the drain.
    seconds = (messages - 1) / rate + drain_timeout
    helpers = [
        context.Process(
            target=helper,
            args=(url, protocol, share, run_id, page, rooms, barrier, messages, seconds, results),
            daemon=True,
        )
        for share, page in zip(shares[1:], pages[1:], strict=True)
    ]
    group, stuck = Group(url, protocol, shares[0], run_id, pages[0], rooms), []
    result = {"clients": clients, "frozen": frozen, "load_processes": processes}
    if len(rooms) > 1:
        result["rooms"] = len(rooms)
    peak = {"peak_rss_mb": 0, "peak_threads": 0}

    async def sample_server():
        while True:
            usage = usage_of(servers)
            peak.update(peak_rss_mb=max(peak["peak_rss_mb"], total(usage, 1)))
            peak.update(peak_threads=max(peak["peak_threads"], total(usage, 2)))
            await asyncio.sleep(0.1)

    async def send(room, ws):
        for seq in range(messages):
            await asyncio.sleep(max(0.0, first_send + seq / rate - time.monotonic()))
            try:
                await ws.send(chat_frame(protocol, run_id, seq, size, room))
            except ConnectionClosed:
                break  # the server dropped the sender: what it could not send is lost

    sampler = asyncio.create_task(sample_server()) if servers else None
    try:
        before = usage_of(servers)  # the servers before any client: for the memory per page
        for process in helpers:
            process.start()
        for _ in range(frozen):
            stuck.append(await frozen_client(url, protocol))
        await group.join(barrier)
        joined = usage_of(servers)
        first_send = time.monotonic()
        await asyncio.gather(*(send(room, ws) for room, ws in group.senders.items()))
        reports = [await group.received(messages, time.monotonic() + drain_timeout)]
        reports += [await asyncio.to_thread(results.get, True, 60) for _ in helpers]
        elapsed = time.monotonic() - first_send
        latencies = sorted(1000 * latency for report in reports for latency in report["latencies"])
        cuts = (
            statistics.quantiles(latencies, n=100, method="inclusive")
            if len(latencies) > 1
            else [None] * 99
        )
        last_arrival = max(report["last_arrival"] for report in reports)
        failures = [failure for report in reports for failure in report["failures"]]
        answers = reports[0]["answers"]  # the senders are all in this process
        # A message the server refused (it answered with an error) is not to be delivered; one it
        # took, or did not answer at all, is, to every client of its room.
        refused = {key for key, answer in answers.items() if "error" in answer}
        expected = delivered = delivered_refused = 0
        for room, got in (pair for report in reports for pair in report["received"]):
            taken = {seq for seq in range(messages) if (room, seq) not in refused}
            got = {int(seq) for seq in got}
            expected += len(taken)
            delivered += len(taken & got)
            delivered_refused += len(got - taken)
        taken = messages * len(rooms) - len(refused)
        result.update(
            {name: sum(report[name] for report in reports) for name in ("duplicates", "dropped")},
            connect_s=max(report["connect_s"] for report in reports),
            # What the join storm cost: the frames all the clients received before the first send.
            join_frames=sum(report["join_frames"] for report in reports),
            connected=clients - len(failures),
            expected=expected,
            delivered=len(latencies),
            lost=expected - delivered,
            p50_ms=cuts[49],
            p99_ms=cuts[98],
            max_ms=max(latencies, default=None),
            late=sum(latency > LATE_MS for latency in latencies),
            # The messages taken in every room, from the first send until the last arrived.
            messages_per_s=taken / max(1e-9, last_arrival - first_send),
            # In % of one core: all the load generator's processes, and the busiest of them.
            load_cpu_percent=100 * sum(report["cpu_s"] for report in reports) / elapsed,
            busiest_load_cpu_percent=100 * max(report["cpu_s"] for report in reports) / elapsed,
        )
        if protocol == "rooms":  # the servers' answers to the senders' messages
            result.update(
                accepted=sum("ok" in answer for answer in answers.values()),
                refused=len(refused),
                refusals=sorted(
                    {answer["error"] for answer in answers.values() if "error" in answer}
                ),
                unanswered=messages * len(rooms) - len(answers),
                delivered_refused=delivered_refused,  # must be 0: a refused message reached a page
            )
        if failures:
            result["error"] = f"{len(failures)} clients did not connect, e.g. {failures[0]}"
        if servers:
            after = usage_of(servers)
            cpu = {name: after[name][0] - joined[name][0] for name in servers}
            result["server_cpu_s"] = sum(cpu.values())
            result["cpu_us_per_delivery"] = 1e6 * result["server_cpu_s"] / max(1, len(latencies))
            if len(servers) > 1:
                result["cpu_us_per_delivery_of"] = {
                    name: 1e6 * seconds / max(1, len(latencies)) for name, seconds in cpu.items()
                }
            # What the server grew by while the messages flowed (peak_rss_mb is sampled too).
            result["rss_growth_mb"] = max(peak["peak_rss_mb"], total(after, 1))
            result["rss_growth_mb"] -= total(joined, 1)
            # What the connected clients cost the servers' memory, over all their processes.
            pages = max(1, clients - len(failures))
            result["kb_per_page"] = 1024 * (total(joined, 1) - total(before, 1)) / pages
            if len(servers) > 1:
                result["kb_per_page_of"] = {
                    name: 1024 * (joined[name][1] - before[name][1]) / pages for name in servers
                }
        if stuck:
            result["frozen_dropped"] = sum(await asyncio.gather(*map(dropped_by_server, stuck)))
            # When the healthy clients were first sent a smaller online count: the server let
            # the frozen client go (step 03 lets it go DROP_GRACE seconds after dropping it).
            fell = [report["count_fell_at"] for report in reports if report["count_fell_at"]]
            result["frozen_let_go_s"] = min(fell) - first_send if fell else None
        return result
    finally:
        barrier.abort()  # a helper still waiting for the others gives up
        if sampler:
            sampler.cancel()
        group.close()
        for ws in stuck:
            ws.transport.abort()
        for process in helpers:
            process.kill()  # done already, or stuck after an error
            process.join()
        result.update(peak)


async def flood(
    url: str,
    protocol: str = "raw",
    clients: int = 20,
    frames: int = 5000,
    deadline: float = 30.0,
) -> dict:
    """The flood: `clients` clients listen while one more sends `frames` chat messages as
    fast as its socket allows and reads nothing; right after, another client sends one message,
    the probe. The figures: how many listeners the server dropped, how many of the flood's
    messages each received, how late the probe reached them, when the flood was over (no frame
    for a second), and whether the server dropped the flooder."""
    loopback_only(url)
    if not 1 <= clients <= MAX_CLIENTS or not 1 <= frames <= MAX_MESSAGES:
        raise ValueError(f"at most {MAX_CLIENTS} clients and {MAX_MESSAGES} messages per run")
    run_id, probe = secrets.token_hex(4), str(frames)
    group = Group(url, protocol, clients, run_id)
    # The flooder reads nothing (websockets stops reading its socket after 16 unread frames).
    flooder, prober = None, None
    try:
        await group.join(threading.Barrier(1))
        if group.failures:
            raise ConnectionError(f"{len(group.failures)} listeners did not connect")
        flooder, prober = [await open_socket(url, protocol) for _ in range(2)]
        cpu, started, sent = cpu_seconds(psutil.Process()), time.monotonic(), 0
        with contextlib.suppress(ConnectionClosed):  # the server may drop the flooder
            for seq in range(frames):
                await flooder.send(chat_frame(protocol, run_id, seq))
                sent += 1
        flood_s, probe_sent = time.monotonic() - started, time.monotonic()
        await prober.send(chat_frame(protocol, run_id, frames))
        listeners = list(zip(group.arrivals, group.readers, strict=True))

        def waiting():  # listeners without the probe that the server has not dropped
            return [got for got, reader in listeners if probe not in got and not reader.done()]

        # The probe may overtake the flood (Socket.IO handles each event in a thread of its own):
        # wait for both, the flood being over when no frame came for a second.
        while (waiting() or time.monotonic() - group.last_frame < 1) and (
            time.monotonic() - started < deadline
        ):
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        probe_ms = [  # to the listeners still connected
            1000 * (got[probe] - probe_sent)
            for got, reader in listeners
            if probe in got and not reader.done()
        ]
        received = sorted(len(got) - (probe in got) for got in group.arrivals)
        last = max(
            (at for got in group.arrivals for seq, at in got.items() if seq != probe),
            default=started,
        )
        return {
            "clients": clients,
            "frames": frames,
            "flood_sent": sent,
            "flood_send_s": flood_s,
            "listeners_dropped": group.dropped,
            "flood_received": [received[0], statistics.median(received), received[-1]],
            "flood_over_s": last - started,
            "probe_missing": len(waiting()),
            "probe_max_ms": max(probe_ms, default=None),
            "load_cpu_percent": 100 * (cpu_seconds(psutil.Process()) - cpu) / elapsed,
            "flooder_dropped": await dropped_by_server(flooder),
        }
    finally:
        group.close()
        for ws in (flooder, prober):
            if ws:
                ws.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws://127.0.0.1:PORT/chatroom (step 03), ws://127.0.0.1:PORT/")
    parser.add_argument("--protocol", choices=["raw", "socketio"], default="raw")
    for option in ("clients", "messages", "size", "frozen", "server-pid"):
        parser.add_argument(f"--{option}", type=int, default=argparse.SUPPRESS)
    parser.add_argument("--flood", type=int, metavar="FRAMES", help="flood() instead of run()")
    options = vars(parser.parse_args())
    url, frames = options.pop("url"), options.pop("flood")
    scenario = flood(url, frames=frames, **options) if frames else run(url, **options)
    print(json.dumps(asyncio.run(scenario), indent=1))


if __name__ == "__main__":
    main()
