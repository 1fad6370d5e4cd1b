"""Step 04: the Socket.IO chat, its broadcast, presence, clock and acknowledged errors."""

import importlib.util
import json
import re
import sys
import urllib.error
import urllib.request

import pytest
from harness import ROOT, StepServer, no_reload
from playwright.sync_api import expect
from simple_websocket import Client, ConnectionClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

STEP = "04_socketio_broadcast"
XSS = "<img src=x onerror=alert(1)>"
RECONNECT_TIMEOUT = 20_000  # milliseconds


# --- the step's app in this process, for socketio.test_client ---


@pytest.fixture(scope="module")
def step():
    """The step's app.py imported as a module (its folder name is not a Python identifier)."""
    spec = importlib.util.spec_from_file_location("step04_app", ROOT / "steps" / STEP / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Flask finds templates/ through the module's file
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def connect_client(step):
    """Connect Socket.IO test clients: `alice = connect_client()`; all leave after the test."""
    clients = []

    def open_client():
        client = step.socketio.test_client(step.app)
        assert client.is_connected()
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        if client.is_connected():
            client.disconnect()


def events(client, name):
    """The arguments of every `name` event the client received since the last call."""
    return [event["args"][0] for event in client.get_received() if event["name"] == name]


def test_message_from_alice_reaches_alice_and_bob(connect_client):
    alice, bob = connect_client(), connect_client()
    answer = alice.emit("send message", {"data": " hello ", "username": "Alice"}, callback=True)
    assert answer == {"ok": True}
    for client in (alice, bob):
        (message,) = events(client, "new message")
        assert message["name"] == "Alice"
        assert message["text"] == "hello"
        assert re.fullmatch(r"\d\d:\d\d", message["time"])


def test_message_of_exactly_500_characters_is_accepted(connect_client):
    alice, bob = connect_client(), connect_client()
    answer = alice.emit("send message", {"data": "x" * 500, "username": "Alice"}, callback=True)
    assert answer == {"ok": True}
    assert [message["text"] for message in events(bob, "new message")] == ["x" * 500]


def test_message_without_a_name_is_signed_anonymous(connect_client):
    alice = connect_client()
    assert alice.emit("send message", {"data": "hi", "username": "  "}, callback=True) == {
        "ok": True
    }
    assert [message["name"] for message in events(alice, "new message")] == ["anonymous"]


NOT_A_MESSAGE = "That was not a chat message (it needs data and username as text)."


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"data": "", "username": "Alice"}, "Type a message before you send it."),
        ({"data": "   \n\t", "username": "Alice"}, "Type a message before you send it."),
        (
            {"data": "x" * 501, "username": "Alice"},
            "A message has at most 500 characters; yours has 501.",
        ),
        ({"data": "hello", "username": "A" * 41}, "A name has at most 40 characters."),
        ({"data": 42, "username": "Alice"}, NOT_A_MESSAGE),
        ({"data": ["hi"], "username": "Alice"}, NOT_A_MESSAGE),
        ({"data": "hello", "username": None}, NOT_A_MESSAGE),
        ({"username": "Alice"}, NOT_A_MESSAGE),
        ({"data": "hello"}, NOT_A_MESSAGE),
        ("just a string", NOT_A_MESSAGE),
    ],
)
def test_bad_input_is_answered_to_the_sender_only_and_nothing_is_broadcast(
    connect_client, payload, error
):
    alice, bob = connect_client(), connect_client()
    alice.get_received(), bob.get_received()  # forget the presence events of the connections
    assert alice.emit("send message", payload, callback=True) == {"error": error}
    assert events(alice, "new message") == []
    assert [event["name"] for event in bob.get_received() if event["name"] != "tick"] == []


def test_online_count_goes_up_and_down_for_everyone(connect_client):
    alice = connect_client()
    before = events(alice, "presence")[-1]["count"]
    bob = connect_client()
    assert events(alice, "presence") == [{"count": before + 1}]
    assert events(bob, "presence") == [{"count": before + 1}]
    bob.disconnect()
    assert events(alice, "presence") == [{"count": before}]


def test_clock_task_is_started_once_however_many_clients_connect(step, connect_client):
    connect_client()
    first = step.clock
    connect_client()
    connect_client()
    assert step.clock is first
    assert first.is_alive()


# --- fast tier on the wire: raw WebSocket clients against `python app.py` ---


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    with StepServer(STEP, tmp_path_factory.mktemp("logs"), CLOCK_INTERVAL=0.2) as server:
        yield server


def engine_io_url(server):
    return f"{server.ws_url}/socket.io/?EIO=4&transport=websocket"


@pytest.fixture
def raw_socket(chat_server):
    """A plain WebSocket to the Engine.IO endpoint, speaking the protocol by hand.

    simple-websocket, not websockets: Werkzeug keeps the TCP connection open after the close
    handshake, and websockets' client would wait 10 s for it to drop.
    """
    ws = Client.connect(engine_io_url(chat_server))  # no Origin header, like most non-browsers
    yield ws
    ws.close()


def receive_until(ws, prefix):
    """Read Engine.IO packets until one starts with `prefix`; return all of them, that one last."""
    packets = []
    while not packets or not packets[-1].startswith(prefix):
        packet = ws.receive(timeout=5)
        assert packet is not None, f"no packet starting with {prefix!r} within 5 s"
        packets.append(packet)
    return packets


def test_socket_from_a_foreign_origin_is_refused(chat_server):
    with pytest.raises(InvalidStatus) as refused:
        connect(engine_io_url(chat_server), origin="http://evil.example")
    assert refused.value.response.status_code == 400
    # Long-polling, the transport Socket.IO starts with, is refused the same way.
    request = urllib.request.Request(
        f"{chat_server.url}/socket.io/?EIO=4&transport=polling",
        headers={"Origin": "http://evil.example"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400


def test_socket_from_the_page_own_origin_is_accepted_with_a_64_kib_limit(chat_server):
    request = urllib.request.Request(
        f"{chat_server.url}/socket.io/?EIO=4&transport=polling",
        headers={"Origin": chat_server.url},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        opened = response.read().decode()  # the Engine.IO open packet: 0{"sid":...}
    assert json.loads(opened[1:])["maxPayload"] == 64 * 1024


def test_clock_ticks_every_clock_interval(raw_socket):
    raw_socket.send("40")  # Socket.IO: connect to the main namespace
    ticks = [json.loads(receive_until(raw_socket, '42["tick"')[-1][2:])[1] for _ in range(3)]
    for tick in ticks:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", tick)


def connect_raw(server):
    """A connected Socket.IO client spoken by hand: returns the socket and what it has received."""
    ws = Client.connect(engine_io_url(server))
    ws.send("40")  # Socket.IO: connect to the main namespace
    return ws, receive_until(ws, "40")


def test_packet_over_64_kib_closes_only_that_connection(chat_server):
    alice, _ = connect_raw(chat_server)
    mallory, _ = connect_raw(chat_server)
    try:
        joined = json.loads(receive_until(alice, '42["presence"')[-1][2:])[1]["count"]
        mallory.send('42["send message",{"data":"' + "x" * 70_000 + '","username":"M"}]')
        with pytest.raises(ConnectionClosed):
            receive_until(mallory, "never")
        # Alice sees one person fewer at once and can still chat.
        left = json.loads(receive_until(alice, '42["presence"')[-1][2:])[1]["count"]
        assert left == joined - 1
        alice.send('42["send message",{"data":"still here","username":"Alice"}]')
        assert "still here" in receive_until(alice, '42["new message"')[-1]
    finally:
        alice.close()


def test_one_chat_message_costs_18_bytes_more_on_socket_io_than_on_a_raw_websocket(raw_socket):
    """The measurement behind the wire-overhead row of the README's table."""
    receive_until(raw_socket, "0")  # the Engine.IO open packet: 0{"sid":...}
    raw_socket.send("40")  # Socket.IO: connect to the main namespace
    receive_until(raw_socket, "40")
    # What the page's emit("send message", {...}, callback) puts on the wire, ack id 1.
    sent = '421["send message",{"data":"hello","username":"Alice"}]'
    raw_socket.send(sent)
    # The broadcast is queued before the handler returns, so it comes before the ack.
    *before, ack = receive_until(raw_socket, "431")
    (broadcast,) = [packet for packet in before if packet.startswith('42["new message"')]

    message = json.loads(broadcast[2:])[1]
    assert message["name"] == "Alice"
    assert message["text"] == "hello"
    # A raw WebSocket would carry the bare JSON objects, the event name left implicit.
    raw_sent = json.dumps({"data": "hello", "username": "Alice"}, separators=(",", ":"))
    raw_broadcast = json.dumps(message, separators=(",", ":"))
    assert (len(sent), len(raw_sent)) == (55, 35)
    assert (len(broadcast), len(raw_broadcast)) == (64, 46)
    assert ack == '431[{"ok":true}]'  # 16 bytes, to the sender only


def test_step_03_broadcasts_the_same_message_as_157_bytes_of_html(tmp_path):
    """The step 03 column of the README's wire-overhead row: its server, a raw WebSocket."""
    with StepServer("03_chat", tmp_path) as step_03:
        ws = Client.connect(f"{step_03.ws_url}/chatroom")
        try:
            ws.send(json.dumps({"name": "Alice", "chat_message": "hello"}))
            fragment = receive_until(ws, "<div hx-swap-oob")[-1]
        finally:
            ws.close()
    assert "<b>Alice</b>" in fragment
    assert "<span>hello</span>" in fragment
    assert len(fragment.encode()) == 157, "step 03's fragment changed: update README.md's table"


# --- in the browser ---


def open_chat_page(page, server, name):
    page.goto(server.url)
    expect(page.locator("#status")).to_have_text("connected")
    page.get_by_label("Name").fill(name)


def send(page, text):
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def test_message_from_alice_appears_for_alice_and_bob_without_reload(two_users, chat_server):
    alice, bob = two_users
    open_chat_page(alice, chat_server, "Alice")
    open_chat_page(bob, chat_server, "Bob")
    with no_reload(alice), no_reload(bob):
        send(alice, "hello, everyone")
        for page in (alice, bob):
            expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(
                [re.compile(r"^Alice \d\d:\d\d hello, everyone$")]
            )
    expect(alice.get_by_label("Message")).to_have_value("")


def test_xss_message_shows_as_text_and_nothing_runs(two_users, chat_server):
    alice, bob = two_users
    dialogs = []
    for page in (alice, bob):
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    open_chat_page(alice, chat_server, "Alice")
    open_chat_page(bob, chat_server, "<b>Bob</b>")
    send(alice, XSS)
    send(bob, "hi")
    for page in (alice, bob):
        log = page.get_by_role("log")
        expect(log.get_by_role("listitem")).to_have_text(
            [re.compile(f"^Alice .* {re.escape(XSS)}$"), re.compile(r"^<b>Bob</b> .* hi$")]
        )
        expect(log.locator("img")).to_have_count(0)
        expect(log.locator("b")).to_have_text(["Alice", "<b>Bob</b>"])  # the names, as text
    assert dialogs == []


def test_bad_input_shows_an_alert_to_alice_only_and_nothing_to_bob(two_users, chat_server):
    alice, bob = two_users
    open_chat_page(alice, chat_server, "Alice")
    open_chat_page(bob, chat_server, "Bob")
    for text, error in [
        ("   ", "Type a message before you send it."),
        ("x" * 501, "A message has at most 500 characters; yours has 501."),
    ]:
        send(alice, text)
        expect(alice.get_by_role("alert")).to_have_text(error)
        expect(alice.get_by_label("Message")).to_have_value(text)  # kept, to be corrected
    send(alice, "now a good one")
    expect(alice.get_by_role("alert")).to_have_text("")
    # Bob's first and only message is the good one: nothing was broadcast before it.
    expect(bob.get_by_role("log").get_by_role("listitem")).to_have_text(
        [re.compile("now a good one$")]
    )
    expect(bob.get_by_role("alert")).to_have_text("")


def test_clock_ticks_without_reload(page, chat_server):
    page.goto(chat_server.url)
    clock = page.locator("#clock")
    first = clock.text_content()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first)
    with no_reload(page):
        expect(clock).not_to_have_text(first)
    expect(clock).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))


def test_online_goes_from_two_to_one_when_bob_leaves(two_users, serve):
    server = serve(STEP)
    alice, bob = two_users
    open_chat_page(alice, server, "Alice")
    open_chat_page(bob, server, "Bob")
    for page in (alice, bob):
        expect(page.locator("#online")).to_have_text("2")
    with no_reload(alice):
        bob.close()
        expect(alice.locator("#online")).to_have_text("1")


def test_pages_reconnect_by_themselves_after_a_server_restart(two_users, serve):
    server = serve(STEP)
    alice, bob = two_users
    open_chat_page(alice, server, "Alice")
    open_chat_page(bob, server, "Bob")
    expect(alice.locator("#online")).to_have_text("2")
    with no_reload(alice), no_reload(bob):
        server.stop()  # stop, then start: what restart() does, with a look at the pages between
        for page in (alice, bob):
            expect(page.locator("#status")).to_have_text("disconnected")
        server.start()
        for page in (alice, bob):
            # Socket.IO waits 0.5 to 1.5 s before its first retry, then longer each time (up
            # to 5 s), and a loaded machine may take seconds to start the server.
            expect(page.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
            expect(page.locator("#online")).to_have_text("2")
        send(alice, "after the restart")
        expect(bob.get_by_role("log").get_by_role("listitem")).to_have_text(
            [re.compile("after the restart$")]
        )


def test_chat_works_over_long_polling_when_websockets_are_blocked(two_users, chat_server):
    alice, bob = two_users
    blocked = []

    def refuse(ws):
        blocked.append(ws.url)
        ws.close()

    # Alice's network refuses WebSockets (an old proxy, say): Socket.IO stays on long-polling.
    alice.route_web_socket(re.compile(r"/socket\.io/"), refuse)
    open_chat_page(alice, chat_server, "Alice")
    open_chat_page(bob, chat_server, "Bob")
    send(alice, "sent by polling")
    send(bob, "received by polling")
    for page in (alice, bob):
        expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(
            [re.compile("sent by polling$"), re.compile("received by polling$")]
        )
    bob.wait_for_function("socket.io.engine.transport.name === 'websocket'")
    assert blocked, "Alice's page never tried a WebSocket"
    assert alice.evaluate("socket.io.engine.transport.name") == "polling"
