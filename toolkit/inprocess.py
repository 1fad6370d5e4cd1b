"""Steps 07 and 08 in this process, for the tests where a handler's logic is the point, not the
transport: the app from the step's own `create_app(config)`, Flask's test client for the pages
and Flask-SocketIO's test client for the sockets. No port, no thread per request: a test of the
forms or of a `join` takes milliseconds.

`InProcess` stands where a server would (`url`, `database`), so that the helpers of people.py
(`sign_up`, `post_form`, `create_room`, `rows`, ...) and the `connect` fixture work on it as on a
real server: `session(step)` gives a `TestHttp`, a person's browser over Flask's test client, and
`socketio_by_hand(step, cookie, auth)` an `InProcessSocket`, which speaks the same packets as
clients.SocketIOByHand does over a WebSocket, straight to the step's Socket.IO server.
"""

import queue
import threading
from pathlib import Path

from flask_socketio.test_client import SocketIOTestClient

from toolkit.clients import SocketIOByHand
from toolkit.launcher import load_step

URL = "http://localhost"  # where Flask's test client says its requests go
CHEAP_HASH = "scrypt:1024:8:1"  # 4 ms a password, as the servers of the tests (fixtures.py)


class InProcess:
    """A step's app made in this process: `InProcess("07_rooms_and_logins", folder, SEND_RATE=0)`.
    `config` goes to create_app, over the environment's settings: its instance folder is in
    `folder`, its passwords are hashed cheaply unless PASSWORD_HASH says otherwise."""

    url = URL

    def __init__(self, step: str, folder: Path, **config):
        self.step = step
        settings = {"INSTANCE_PATH": str(folder / "instance"), "PASSWORD_HASH": CHEAP_HASH}
        self.app = load_step(step).create_app({**settings, **config})
        self.socketio = self.app.extensions["socketio"]
        self.database = Path(self.app.config["DATABASE"])

    def __repr__(self):
        return f"InProcess({self.step!r})"

    def http_session(self, address: str = "127.0.0.1") -> "TestHttp":
        return TestHttp(self.app, address)

    def open_socket(self, cookie=None, auth=None) -> "InProcessSocket":
        return InProcessSocket(self, cookie, auth)


class Answer:
    """A response as requests gives it: status_code, text, url (where the redirects ended),
    headers."""

    def __init__(self, response):
        self.status_code = response.status_code
        self.text = response.get_data(as_text=True)
        environ = response.request.environ  # the query as it was sent: next=%2F, not next=/
        query = environ.get("QUERY_STRING")
        self.url = URL + environ["PATH_INFO"] + (f"?{query}" if query else "")
        self.headers = response.headers


class TestHttp:
    """The parts of requests.Session the tests use, on Flask's test client: one person's
    browser, with its cookies, from `address` (REMOTE_ADDR, as Flask-Limiter reads it)."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, app, address: str = "127.0.0.1"):
        self.client = app.test_client()
        self.client.environ_base["REMOTE_ADDR"] = address

    def get(self, url: str, headers=None) -> Answer:
        return self._send("GET", url, headers=headers)

    def post(self, url: str, data=None, headers=None) -> Answer:
        return self._send("POST", url, data=data, headers=headers)

    def _send(self, method, url, **options) -> Answer:
        path = url.removeprefix(URL)
        return Answer(self.client.open(path, method=method, follow_redirects=True, **options))

    @property
    def cookies(self) -> dict:
        """The session cookie, if the app set one: {name: value}."""
        cookie = self.client.get_cookie("session")
        return {"session": cookie.value} if cookie else {}


# Where each in-process socket's packets go, by its Engine.IO id: the Socket.IO server of every
# in-process app sends through `send_packet` and `send_eio_packet` below.
outboxes: dict[str, queue.Queue] = {}
outboxes_lock = threading.Lock()


def send_packet(eio_sid, packet):
    """What python-socketio's Server._send_packet does, into the socket's outbox."""
    deliver(eio_sid, packet.encode())


def send_eio_packet(eio_sid, eio_packet):
    """What Server._send_eio_packet does (a broadcast encodes once): into the socket's outbox."""
    deliver(eio_sid, eio_packet.data)


def deliver(eio_sid, encoded):
    with outboxes_lock:
        outbox = outboxes.get(eio_sid)
    if outbox is not None:  # a socket closed meanwhile hears nothing
        outbox.put("4" + encoded)  # an Engine.IO message, as over the wire: 42[...], 43N[...]


class Handshake(SocketIOTestClient):
    """Flask-SocketIO's test client, for the handshake alone: it makes the request's environ
    from a Flask test client (its cookies carried) and connects. Its own packet bookkeeping is
    replaced by the outboxes above, which keep every packet, in order, as a string."""

    def __init__(self, app, socketio, outbox, **options):
        self.outbox = outbox
        super().__init__(app, socketio, **options)

    def connect(self, namespace=None, query_string=None, headers=None, auth=None):
        with outboxes_lock:
            outboxes[self.eio_sid] = self.outbox
        self.socketio.server._send_packet = send_packet
        self.socketio.server._send_eio_packet = send_eio_packet
        super().connect(namespace, query_string, headers, auth)


class FakeWebSocket:
    """What SocketIOByHand needs of a WebSocket (send, recv), straight to the Socket.IO server."""

    def __init__(self, server, eio_sid, outbox):
        self.server, self.eio_sid, self.outbox = server, eio_sid, outbox
        self.closed = False
        self.disconnected = False  # the server sent its disconnect, 41

    def send(self, text: str) -> None:
        if self.closed:
            raise ConnectionError("this socket is closed")
        if text.startswith("4"):  # an Engine.IO message: a Socket.IO packet (pongs, "3", go)
            self.server._handle_eio_message(self.eio_sid, text[1:])

    def recv(self, timeout=None) -> str:
        try:
            packet = self.outbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no packet in {timeout} s") from None
        self.disconnected |= packet == "41"
        return packet

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server._handle_eio_disconnect(self.eio_sid, self.server.reason.TRANSPORT_CLOSE)
            with outboxes_lock:
                outboxes.pop(self.eio_sid, None)
            SocketIOTestClient.clients.pop(self.eio_sid, None)


class InProcessSocket(SocketIOByHand):
    """SocketIOByHand over FakeWebSocket: the same packets, in the same order, in this process.
    `cookie` is a Cookie header (a person's, or one forged), `auth` the connect's data."""

    def __init__(self, step: InProcess, cookie=None, auth=None):
        http = step.app.test_client()
        for pair in filter(None, (cookie or "").split("; ")):
            name, _, value = pair.partition("=")
            http.set_cookie(name, value)
        outbox = queue.Queue()
        handshake = Handshake(step.app, step.socketio, outbox, flask_test_client=http, auth=auth)
        self.ws = FakeWebSocket(step.socketio.server, handshake.eio_sid, outbox)
        self.kept, self.asked = [], 0
        self.opened = None  # no Engine.IO open packet in process
        self.answer = self.wait_for(("40", "44"))

    @property
    def closed_by_server(self):
        return self.ws.disconnected
