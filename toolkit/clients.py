"""Clients of the chat steps (03, 04, 05 and on): one name for each thing, whatever the protocol.

- In the browser, the three pages have the same labels and roles: `open_chat`, `say`,
  `messages`, `online_count`.
- Step 03 on the wire: JSON frames in, HTML fragments out (`chat_frame`, `messages_in`, ...).
- Steps 04 and 05 on the wire: Socket.IO spoken by hand over a plain WebSocket (`SocketIOByHand`).
- For floods and frozen clients: `Listener` reads a connection in a thread of its own,
  `tiny_buffer_socket` makes a client whose reads the server soon cannot outpace, and
  `send_past_a_frozen_client` is the Socket.IO experiment of steps 04 and 05.
- For clients that hold on (steps 07 to 09): `websocket_by_hand` opens a WebSocket on a bare
  socket, which then does only what the test makes it do (`masked_frame`), and
  `cut_by_server` says whether the server has ended it.
"""

import base64
import html
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

import psutil
from playwright.sync_api import expect
from websockets.sync.client import connect

from toolkit.launcher import step_folder, wait_until

# The defaults of the three steps: the rate limit and what it tells the sender, how many frames a
# client may fall behind (QUEUE), and how often steps 04 and 05 look at their room (ROOM_CHECK).
SEND_BURST = 10
SEND_RATE = 5
TOO_FAST = "Slow down: at most 10 messages in a row, then 5 a second. That one was not sent."
QUEUE = 100
ROOM_CHECK = 0.2

# --- in the browser ---


def open_chat(page, server, name=None, online=None):
    """Open the chat page and wait until it is connected; type `name` into its Name box.

    Connected means: the count shows `online` if given (step 03's page has no status), else the
    page says "connected" (steps 04 and 05).
    """
    page.goto(server.url)
    if online is None:
        expect(page.locator("#status")).to_have_text("connected")
    else:
        expect(online_count(page)).to_have_text(str(online))
    if name:
        page.get_by_label("Name").fill(name)


def say(page, text):
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def messages(page):
    """The messages the page shows, as list items of its log."""
    return page.get_by_role("log").get_by_role("listitem")


def online_count(page):
    return page.get_by_role("status", name="People online")


# --- step 03 on the wire ---

# One message as step 03 renders it (templates/_message.html), the online count and the alert.
MESSAGE = re.compile(
    r'<li class="message"><b>(.*?)</b> <time [^>]*>[^<]*</time> <span>(.*?)</span>'
)
ONLINE = re.compile(r'<output id="online"[^>]*>(\d+)</output>')
ALERT = re.compile(r'<p id="error" role="alert"[^>]*>(.*?)</p>')


def chat_frame(text, name="bench"):
    """The JSON frame htmx sends for the form (with fewer headers)."""
    return json.dumps({"name": name, "chat_message": text, "headers": {"HX-Request": "true"}})


def messages_in(frame):
    """The (name, text) of every message fragment in one frame, as the page would show them."""
    return [(html.unescape(name), html.unescape(text)) for name, text in MESSAGE.findall(frame)]


def texts(messages):
    return [text for _name, text in messages]


def message_texts(frame):
    """The texts of the messages in one frame (for `Listener`)."""
    return texts(messages_in(frame))


def online_counts(frame):
    """The online count in one frame, if it carries one (for `Listener`)."""
    return [int(count) for count in ONLINE.findall(frame)]


def next_messages(ws, timeout=5):
    """Wait for the next frame that carries messages (skipping counts and alerts)."""
    while True:
        found = messages_in(ws.recv(timeout=timeout))
        if found:
            return found


def next_alert(ws, timeout=5):
    """Wait for the next frame that carries the alert; return its text."""
    while not (found := ALERT.search(ws.recv(timeout=timeout))):
        pass
    return html.unescape(found.group(1))


# --- steps 04 and 05 on the wire ---


ACK = re.compile(r"43(\d+)\[")


def engine_io_url(server):
    return f"{server.ws_url}/socket.io/?EIO=4&transport=websocket"


def event_in(packet):
    """(name, data) of a Socket.IO event packet `42["name", data]`, or None for other packets."""
    if not packet.startswith("42["):
        return None
    name, *data = json.loads(packet[2:])
    return name, (data[0] if data else None)


class SocketIOByHand:
    """A Socket.IO client spoken by hand over a plain WebSocket: Engine.IO 4, then Socket.IO 5,
    as an attacker or a client in another language would, every packet in the order the server
    sent it. (python-socketio's own client runs each event's handler in a thread of its own, so
    its events can overtake each other: the tests of an order or an absence need this one.)

    `0{...}` opens, `40{auth}` connects to the main namespace and is answered `40{"sid":...}` or
    refused with `44{"message":...}`, `42["event", data]` is an event, `42N[...]` asks for
    acknowledgement N, which comes back as `43N[...]`; the server pings with `2`, and this client
    answers `3` while it reads. Waiting for an acknowledgement keeps the packets that came first
    for the next read. (websockets' client, with a short close_timeout since Werkzeug keeps the
    TCP connection open after the close handshake. Not simple-websocket's 1.1: when the open
    packet arrives with the handshake's response, it leaves the packet unread until more data
    comes, here the first ping, 25 s later.)
    """

    def __init__(self, server, cookie=None, auth=None, origin=None, **options):
        """`options` go to websockets' `connect` (a `sock` of one's own, say)."""
        if hasattr(server, "certificate"):  # step 09's stack: TLS, with its self-signed certificate
            options["ssl"] = ssl.create_default_context(cafile=server.certificate)
        # No Origin header unless given, like most scripts.
        self.ws = connect(
            engine_io_url(server),
            additional_headers={"Cookie": cookie} if cookie else {},
            origin=origin,
            compression=None,
            close_timeout=0.1,
            legacy=True,  # a connection to keep, not a `with` block
            **options,
        )
        self.kept = []  # packets read while waiting for an acknowledgement
        self.asked = 0  # acknowledgements asked for so far: the last one's number
        self.opened = self.receive()  # the open packet: 0{"sid":...}
        self.answer = self.connect(auth)

    def connect(self, auth=None):
        """Connect to the main namespace: the answer, 40{"sid":...} or 44{"message":...}."""
        self.ws.send("40" + ("" if auth is None else json.dumps(auth)))
        return self.wait_for(("40", "44"))

    def receive(self, timeout=5):
        """The next packet other than a ping (which it answers): a kept one first. TimeoutError
        if none comes within `timeout` seconds, however many pings do."""
        if self.kept:
            return self.kept.pop(0)
        deadline = time.monotonic() + timeout
        while (packet := self.ws.recv(timeout=max(0, deadline - time.monotonic()))) == "2":
            self.ws.send("3")
        return packet

    def receive_until(self, prefix, timeout=5):
        """Packets up to the first that starts with `prefix`, that one last."""
        packets = [self.receive(timeout)]
        while not packets[-1].startswith(prefix):
            packets.append(self.receive(timeout))
        return packets

    def wait_for(self, prefix, timeout=5):
        """The next packet that starts with `prefix`; those before it are kept."""
        *before, found = self.receive_until(prefix, timeout)
        self.kept += before
        return found

    def next_event(self, name, timeout=5):
        """The data of the next event called `name`."""
        while (event := self.event(timeout))[0] != name:
            pass
        return event[1]

    def event(self, timeout=5):
        """The next event, as (name, data)."""
        while (event := event_in(self.receive(timeout))) is None:
            pass
        return event

    def emit(self, event, data, ack=False):
        """Send an event; with `ack`, ask for an acknowledgement and return its number."""
        if ack:
            self.asked += 1
        self.ws.send(f"42{self.asked if ack else ''}" + json.dumps([event, data]))
        return self.asked if ack else None

    def say(self, text, name="bench", ack=False):
        """A chat message of steps 04 and 05."""
        return self.emit("send message", {"data": text, "username": name}, ack)

    def answer_to(self, number, timeout=5):
        """What the handler of the event that asked for acknowledgement `number` returned."""
        return json.loads(self.wait_for(f"43{number}[", timeout)[2 + len(str(number)) :])[0]

    def call(self, event, data):
        """Emit, and return the acknowledgement's answer."""
        return self.answer_to(self.emit(event, data, ack=True))

    def answers(self, count, timeout=5):
        """The next `count` acknowledgements, {number: what the handler returned}.

        They come in the order the handlers finish: python-socketio runs each event's handler in
        a thread of its own unless the app says otherwise.
        """
        found = {}
        while len(found) < count:
            packet = self.wait_for("43", timeout)
            acked = ACK.match(packet)
            found[int(acked[1])] = json.loads(packet[acked.end() - 1 :])[0]
        return found

    @property
    def closed_by_server(self):
        # A close frame came. (Werkzeug then keeps the TCP connection, so recv() would wait.)
        return self.ws.protocol.close_rcvd is not None

    def close(self):
        self.ws.close()


def socketio_by_hand(server, cookie=None, auth=None, **options):
    """A SocketIOByHand to `server`, or its twin in the test's own process when the server is
    one (toolkit.inprocess.InProcess): the same packets, no WebSocket."""
    if hasattr(server, "open_socket"):
        assert not options, f"in process, a socket takes no {sorted(options)}"
        return server.open_socket(cookie, auth)
    return SocketIOByHand(server, cookie, auth, **options)


def socketio_texts(packet):
    """The texts of the chat messages in one Socket.IO packet (for `Listener`)."""
    event = event_in(packet)
    return [event[1]["text"]] if event and event[0] == "new message" else []


def socketio_counts(packet):
    """The online count in one Socket.IO packet, if it carries one (for `Listener`)."""
    event = event_in(packet)
    return [event[1]["count"]] if event and event[0] == "presence" else []


# --- floods and frozen clients ---

# The flood: how many frames or events one client sends as fast as it can. (The bench sends
# 5,000; a thousand already fail these checks on a step without its rate limit.)
FLOOD = 1000


class Listener(threading.Thread):
    """Reads a chat connection in a thread of its own, noting what it received and when.

    `receive` returns the next frame or packet and raises once the connection is closed; `parse`
    finds what the test looks for in one (message texts, online counts).
    """

    def __init__(self, receive, parse):
        super().__init__(daemon=True)
        self.receive, self.parse = receive, parse
        self.items = []  # (item, time.monotonic() of its arrival), in order
        self.ended = None  # why the connection ended: the exception that closed it
        self.start()

    def run(self):
        try:
            while True:
                frame = self.receive()
                now = time.monotonic()
                self.items += [(item, now) for item in self.parse(frame)]
        except Exception as error:  # closed by the server, or by the test when it is done
            self.ended = error

    def arrival(self, wanted):
        """When `wanted` first arrived, or None."""
        return next((at for item, at in self.items if item == wanted), None)

    def latest(self):
        return self.items[-1][0] if self.items else None


def check_no_listener_was_dropped_or_delayed(listeners, flood_started, probe_sent, burst, rate):
    """After a flood and a probe message: no listener was dropped, each had the probe within a
    second, and of the flood each got no more than the rate limit lets through."""
    wait_until(
        lambda: all(ear.arrival("probe") or ear.ended for ear in listeners),
        "every listener has the probe or was dropped",
    )
    allowed = burst + rate * (time.monotonic() - flood_started)
    assert [ear.ended for ear in listeners] == [None] * len(listeners)
    assert max(ear.arrival("probe") - probe_sent for ear in listeners) < 1
    for ear in listeners:
        assert len(ear.items) - 1 <= allowed  # the flood's messages that got through


def tiny_buffer_socket(port, segment=None):
    """A TCP connection to `port` on this machine whose client side takes in at most a few KB at a
    time; with `segment`, in TCP segments of at most that many bytes.

    Wrapped in a WebSocket client that stops reading, it fills the server's buffers quickly. (The
    kernel sizes the server's send buffer by the segment: on loopback, where a segment may hold
    64 KB, it grows to megabytes; a small one keeps it to tens of KB.)
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if segment:  # announced when the connection opens: set it before
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, segment)
    sock.connect(("127.0.0.1", port))
    return sock


def websocket_by_hand(server, query="EIO=4&transport=websocket"):
    """A socket on which a WebSocket to `/socket.io/?<query>` was opened by hand (over TLS to
    step 09's stack), and nothing else done: no library answers a ping or a close frame for it,
    or closes it. What came after the handshake's answer is left to read."""
    tls = hasattr(server, "certificate")
    host, port = ("localhost", server.https_port) if tls else ("127.0.0.1", server.port)
    sock = socket.create_connection((host, port), timeout=5)
    if tls:
        context = ssl.create_default_context(cafile=server.certificate)
        sock = context.wrap_socket(sock, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    request = [
        f"GET /socket.io/?{query} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    sock.sendall("\r\n".join([*request, "", ""]).encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # one byte at a time: the frames that follow stay in the socket
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    return sock


def masked_frame(text):
    """A client's WebSocket text frame of under 126 bytes (masked, as a client's must be)."""
    data, mask = text.encode(), os.urandom(4)
    masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(data))
    return bytes([0x81, 0x80 | len(data)]) + mask + masked


def cut_by_server(sock, received):
    """Whether the server has ended the connection; what came meanwhile is added to `received`
    (a bytearray), unread by anyone else."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            received += data
    except (BlockingIOError, ssl.SSLWantReadError):
        return False  # all read, and the connection still open
    except OSError:
        return True  # reset
    return True  # the end of the stream


def frames_to_fill_the_kernel_buffers(frame_bytes):
    """Enough frames to fill the kernel's buffers between the server and a frozen client."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            send_buffer = int(limits.read().split()[2])
    except OSError:
        send_buffer = 4 * 1024 * 1024  # Linux's default maximum
    # The send buffer holds at most `send_buffer` bytes (payload and overhead); a few hundred
    # frames more cover the frozen client's tiny receive buffer and its outbox on the server.
    return send_buffer // frame_bytes + 300


def send_past_a_frozen_client(frozen_at, sending_at, total, batch=20):
    """A Socket.IO client of server `frozen_at` that never reads, while a client of `sending_at`
    sends `total` messages of 6 kB on the wire, `batch` at a time, reading its own back so that it
    never falls behind itself.

    Returns after how many messages the online count fell to 1 (None: never), and how many bytes
    `frozen_at` grew from the end of the first batch (which warms the server up) to the last.
    """
    text = "\U0001f600" * 490  # JSON escapes each as two \uXXXX: 6 kB a packet
    rss = psutil.Process(frozen_at.process.pid).memory_info
    sender = SocketIOByHand(sending_at)
    frozen = connect(
        engine_io_url(frozen_at),
        sock=tiny_buffer_socket(frozen_at.port),
        compression=None,
        max_queue=1,  # websockets stops reading the socket at the first unread packet
        close_timeout=0.1,
        legacy=True,
    )
    try:
        frozen.send("40")
        while sender.next_event("presence")["count"] != 2:
            pass
        online, dropped_after = 2, None
        for first in range(0, total, batch):
            if first == batch:
                start_rss = rss().rss
            for n in range(first, first + batch):
                sender.say(f"{n} {text}")
            received = 0
            while received < batch:
                name, data = event_in(sender.receive()) or (None, None)
                received += name == "new message"
                if name == "presence":
                    online = data["count"]
            if online == 1 and dropped_after is None:
                dropped_after = first + batch
        return dropped_after, rss().rss - start_rss
    finally:
        frozen.socket.close()
        sender.close()


def announce(redis_url, *args, step="05_scale_out"):
    """Run step 05's announce.py, which speaks to every page through Redis."""
    return subprocess.run(
        [sys.executable, str(step_folder(step) / "announce.py"), *args],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=30,
    )
