"""Step 03: the chat room, with hostile input, cross-site pages, frozen clients and restarts."""

import html
import json
import re
import socket
import threading
from contextlib import ExitStack

import psutil
import pytest
from harness import no_reload, wait_until
from playwright.sync_api import expect
from simple_websocket import Client, ConnectionClosed
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

MAX_MESSAGE_BYTES = 64 * 1024
RESTART_TIMEOUT_MS = 20_000  # a restart takes a second or two, plus htmx's reconnect backoff
XSS = "<img src=x onerror=alert(1)>"
# One message as the server renders it (templates/_message.html); the bench parses the same.
MESSAGE = re.compile(
    r'<li class="message"><b>(.*?)</b> <time [^>]*>[^<]*</time> <span>(.*?)</span>'
)
ONLINE = re.compile(r'<output id="online"[^>]*>(\d+)</output>')
ALERT = re.compile(r'<p id="error" role="alert"[^>]*>(.*?)</p>')
# Frames a page could never send, and forms a user can fill in badly, with what the sender reads.
BAD_FRAMES = {
    "not JSON": ("hello", "the frame is not JSON"),
    "JSON but not an object": ("[1, 2]", "it has no chat_message field"),
    "no chat_message": (json.dumps({"name": "Alice"}), "it has no chat_message field"),
    "chat_message not text": (json.dumps({"chat_message": 5}), "it has no chat_message field"),
    "empty message": (json.dumps({"chat_message": ""}), "Type a message before you send it."),
    "blank message": (json.dumps({"chat_message": " \n\t "}), "Type a message before you send it."),
    "501 characters": (json.dumps({"chat_message": "x" * 501}), "yours has 501"),
    "41-character name": (
        json.dumps({"name": "n" * 41, "chat_message": "hi"}),
        "A name has at most 40 characters.",
    ),
}


def chat_frame(text, name="bench"):
    """The JSON frame htmx sends for the form (with fewer headers)."""
    return json.dumps({"name": name, "chat_message": text, "headers": {"HX-Request": "true"}})


def messages_in(frame):
    """The (name, text) of every message fragment in one frame, as the page would show them."""
    return [(html.unescape(name), html.unescape(text)) for name, text in MESSAGE.findall(frame)]


def next_messages(ws, timeout=5):
    """Wait for the next frame that carries messages (skipping #online updates)."""
    while True:
        found = messages_in(ws.recv(timeout=timeout))
        if found:
            return found


def texts(messages):
    return [text for _name, text in messages]


def open_chat(page, server, online, name=None):
    """Open the chat and wait until the server counts this page among the `online` people."""
    page.goto(server.url)
    expect(page.locator("#online")).to_have_text(str(online))
    if name:
        page.get_by_label("Name").fill(name)


def say(page, text):
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def message_list(page):
    return page.get_by_role("log").get_by_role("listitem")


# --- in the browser: two users ---


def test_message_from_alice_appears_for_alice_and_bob_without_reload(two_users, serve):
    server = serve("03_chat")
    alice, bob = two_users
    open_chat(alice, server, 1, name="Alice")
    open_chat(bob, server, 2, name="Bob")
    with no_reload(alice), no_reload(bob):
        say(alice, "Hello, Bob!")
        for page in (alice, bob):
            expect(message_list(page)).to_have_count(1)
            expect(message_list(page)).to_contain_text(["Alice"])
            expect(message_list(page)).to_contain_text(["Hello, Bob!"])
    expect(alice.get_by_label("Message")).to_have_value("")
    expect(alice.get_by_label("Name")).to_have_value("Alice")


def test_html_in_a_message_shows_as_text_and_nothing_runs(two_users, serve):
    server = serve("03_chat")
    alice, bob = two_users
    dialogs = []
    for online, page in enumerate((alice, bob), start=1):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        open_chat(page, server, online)
    say(alice, XSS)
    say(alice, "after the trap")  # the image, had it been HTML, errors long before this arrives
    for page in (alice, bob):
        expect(message_list(page)).to_have_count(2)
        expect(message_list(page).first).to_contain_text(XSS)
        expect(page.get_by_role("log").locator("img")).to_have_count(0)
    assert dialogs == []


def test_each_bad_input_shows_its_alert_to_alice_only_and_nothing_to_bob(two_users, serve):
    server = serve("03_chat")
    alice, bob = two_users
    # A page only sends well-formed frames, so two broken ones are forged on their way: when Alice
    # types "[not JSON]" or "[no chat_message]", the server receives the broken frame instead.
    forged = {f"[{bad}]": BAD_FRAMES[bad][0] for bad in ["not JSON", "no chat_message"]}

    def forge(route):
        server_side = route.connect_to_server()
        route.on_message(
            lambda sent: server_side.send(forged.get(json.loads(sent)["chat_message"], sent))
        )

    alice.route_web_socket(re.compile("/chatroom$"), forge)
    open_chat(alice, server, 1)
    open_chat(bob, server, 2)
    # Each alert differs from the one before, so every expect waits for a new answer.
    for typed, alert in [
        ("", "Type a message before you send it."),
        ("x" * 501, "A message has at most 500 characters; yours has 501."),
        ("    ", "Type a message before you send it."),
        ("[not JSON]", "That was not a chat message (the frame is not JSON)."),
        ("[no chat_message]", "That was not a chat message (it has no chat_message field)."),
    ]:
        say(alice, typed)
        expect(alice.get_by_role("alert")).to_have_text(alert)
    # What Alice sends next is the first thing Bob sees: no bad input was broadcast.
    say(alice, "fixed it")
    expect(alice.get_by_role("alert")).to_have_text("")
    for page in (alice, bob):
        expect(message_list(page)).to_have_text([re.compile("fixed it$")])
    expect(bob.get_by_role("alert")).to_have_text("")


def test_online_count_shows_two_then_one_when_bob_leaves(two_users, serve):
    server = serve("03_chat")
    alice, bob = two_users
    open_chat(alice, server, 1)
    open_chat(bob, server, 2)
    for page in (alice, bob):
        expect(page.get_by_role("status", name="People online")).to_have_text("2")
    bob.close()
    expect(alice.get_by_role("status", name="People online")).to_have_text("1")


def test_a_newcomer_first_sees_the_earlier_messages_in_order(two_users, serve):
    server = serve("03_chat")
    alice, bob = two_users
    open_chat(alice, server, 1, name="Alice")
    for text in ["one", "two", "three"]:
        say(alice, text)
    expect(message_list(alice)).to_have_count(3)
    open_chat(bob, server, 2)
    expect(message_list(bob)).to_have_text(
        [re.compile(f"{text}$") for text in ["one", "two", "three"]]
    )
    say(alice, "four")
    expect(message_list(bob)).to_have_count(4)


def test_both_pages_reconnect_by_themselves_after_a_server_restart_and_keep_the_history(
    two_users, serve
):
    server = serve("03_chat")
    alice, bob = two_users
    open_chat(alice, server, 1, name="Alice")
    open_chat(bob, server, 2, name="Bob")
    say(alice, "before the restart")
    expect(message_list(bob)).to_have_count(1)
    with no_reload(alice), no_reload(bob):
        for page in (alice, bob):
            # A marker only the new server can overwrite: "2" again means both pages are back.
            page.evaluate("document.getElementById('online').textContent = 'restarting'")
        server.restart()
        for page in (alice, bob):
            expect(page.locator("#online")).to_have_text("2", timeout=RESTART_TIMEOUT_MS)
        say(bob, "after the restart")
        for page in (alice, bob):
            expect(message_list(page)).to_have_text(
                [re.compile("before the restart$"), re.compile("after the restart$")]
            )


# --- fast tier: Python WebSocket clients against the subprocess ---


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:1", "https://localhost", "null"]
)
def test_socket_opened_from_another_site_is_refused_with_403(serve, origin):
    server = serve("03_chat")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.ws_url}/chatroom", origin=origin)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("own_origin", [True, False], ids=["the page's origin", "no Origin"])
def test_socket_from_the_page_itself_or_a_script_without_origin_is_accepted(serve, own_origin):
    server = serve("03_chat")
    origin = server.url if own_origin else None
    with connect(f"{server.ws_url}/chatroom", origin=origin) as ws:
        ws.send(chat_frame("hello", name="Alice"))
        assert next_messages(ws) == [("Alice", "hello")]


def test_five_clients_sending_100_messages_in_all_each_receive_all_100_in_one_order(serve):
    server = serve("03_chat")
    received = {n: [] for n in range(5)}

    def chat(n):
        for i in range(20):
            clients[n].send(chat_frame(f"{n}-{i}", name=f"client {n}"))
        while len(received[n]) < 100:
            received[n] += texts(next_messages(clients[n]))

    with ExitStack() as stack:
        clients = [stack.enter_context(connect(f"{server.ws_url}/chatroom")) for _ in range(5)]
        threads = [threading.Thread(target=chat, args=(n,)) for n in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    expected = {f"{n}-{i}" for n in range(5) for i in range(20)}
    assert sorted(received[0]) == sorted(expected)
    for n in range(1, 5):
        assert received[n] == received[0]
    for n in range(5):  # and each sender's own messages stay in the order it sent them
        assert [text for text in received[0] if text.startswith(f"{n}-")] == [
            f"{n}-{i}" for i in range(20)
        ]


def test_a_newcomer_receives_the_last_messages_then_live_ones(serve):
    server = serve("03_chat", HISTORY=5)
    with connect(f"{server.ws_url}/chatroom") as alice:
        for i in range(8):
            alice.send(chat_frame(f"m{i}"))
            next_messages(alice)
        with connect(f"{server.ws_url}/chatroom") as bob:
            assert texts(next_messages(bob)) == ["m3", "m4", "m5", "m6", "m7"]
            alice.send(chat_frame("m8"))
            assert texts(next_messages(bob)) == ["m8"]


def test_a_page_joining_while_messages_flow_misses_none_and_sees_none_twice(serve):
    total = 600
    # A queue longer than the burst: here nobody is slow, the test is about the moment Bob joins.
    server = serve("03_chat", HISTORY=50, QUEUE=2 * total)
    flowing = threading.Event()

    def talk(alice):
        for n in range(total):
            alice.send(chat_frame(str(n)))

    def listen(alice):  # Alice reads her own messages too, or she would be dropped
        received = 0
        while received < total:
            received += len(next_messages(alice))
            flowing.set()

    with connect(f"{server.ws_url}/chatroom") as alice:
        threads = [threading.Thread(target=job, args=(alice,)) for job in (talk, listen)]
        for thread in threads:
            thread.start()
        assert flowing.wait(timeout=5)
        with connect(f"{server.ws_url}/chatroom") as bob:
            seen = [int(text) for text in texts(next_messages(bob))]  # the history first
            while seen[-1] != total - 1:
                seen += [int(text) for text in texts(next_messages(bob))]
        for thread in threads:
            thread.join(timeout=10)
    assert seen == list(range(seen[0], total))
    assert seen[0] > 0  # Bob joined after the first messages


def test_each_bad_frame_gets_an_alert_for_the_sender_only_and_nothing_is_broadcast(serve):
    server = serve("03_chat")
    with connect(f"{server.ws_url}/chatroom") as alice, connect(f"{server.ws_url}/chatroom") as bob:
        for frame, alert in BAD_FRAMES.values():
            alice.send(frame)
            answer = alice.recv(timeout=5)
            while 'role="alert"' not in answer:  # skip #online updates
                answer = alice.recv(timeout=5)
            assert alert in html.unescape(ALERT.search(answer).group(1))
        # The first message Bob receives is the good one that follows: nothing came before it.
        alice.send(chat_frame("good"))
        assert texts(next_messages(bob)) == ["good"]


def test_message_of_exactly_500_characters_is_broadcast_and_a_blank_name_is_anonymous(serve):
    server = serve("03_chat")
    with connect(f"{server.ws_url}/chatroom") as ws:
        ws.send(json.dumps({"name": "  ", "chat_message": "  " + "y" * 500 + "  "}))
        assert next_messages(ws) == [("anonymous", "y" * 500)]


def test_html_in_name_and_message_is_escaped_in_the_broadcast_fragment(serve):
    server = serve("03_chat")
    with connect(f"{server.ws_url}/chatroom") as ws:
        ws.send(chat_frame(XSS, name="<b>Mallory</b>"))
        frame = ws.recv(timeout=5)
        while "message" not in frame:
            frame = ws.recv(timeout=5)
    assert "<img" not in frame and "<b>Mallory" not in frame
    assert "&lt;img src=x onerror=alert(1)&gt;" in frame
    assert messages_in(frame) == [("<b>Mallory</b>", XSS)]


def test_oversized_frame_closes_only_that_connection_with_1009(serve):
    server = serve("03_chat")
    with connect(f"{server.ws_url}/chatroom") as bystander:
        # simple-websocket's client sees the close at once (see tests/test_01_echo.py).
        ws = Client.connect(f"{server.ws_url}/chatroom")
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.receive(timeout=5)
        assert closed.value.reason == 1009
        bystander.send(chat_frame("still chatting"))
        assert texts(next_messages(bystander)) == ["still chatting"]


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


def test_a_client_that_never_reads_costs_the_others_nothing_and_is_dropped_with_1013(serve):
    # QUEUE well above the bursts of 10 below; DROP_GRACE longer than the test, which reads the
    # frozen client again at the end (the next test never does).
    server = serve("03_chat", QUEUE=50, DROP_GRACE=60)
    url = f"{server.ws_url}/chatroom"
    # The frozen client: a tiny receive buffer, no compression, and websockets stops reading the
    # socket once it holds one unread frame. The server's writes to it soon block.
    frozen_socket = socket.socket()
    frozen_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen_socket.connect(("127.0.0.1", server.port))
    text = '"' * 490  # each quote is escaped to 5 bytes: about 2.5 kB per fragment
    count = frames_to_fill_the_kernel_buffers(2500)
    with (
        connect(url, sock=frozen_socket, compression=None, max_queue=1, close_timeout=1) as frozen,
        connect(url, compression=None) as sender,  # no compression: less work on 2 cores
        connect(url, compression=None) as healthy,
    ):
        for batch in range(0, count, 10):
            sent = [f"{n} {text}" for n in range(batch, batch + 10)]
            for message in sent:
                sender.send(chat_frame(message))
            # Every batch reaches both healthy clients, in order, each frame within 5 s.
            for ws in (sender, healthy):
                got = []
                while len(got) < len(sent):
                    got += texts(next_messages(ws, timeout=5))
                assert got == sent
        # Now read what the frozen client was sent: the first messages, then a close with 1013.
        frozen_got = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                frozen_got += texts(messages_in(frozen.recv(timeout=10)))
    assert closed.value.rcvd.code == 1013
    assert 0 < len(frozen_got) < count
    assert frozen_got == [f"{n} {text}" for n in range(len(frozen_got))]


def test_a_client_that_never_reads_again_is_cut_off_and_its_threads_end(serve):
    server = serve("03_chat", QUEUE=5, DROP_GRACE=0.2)
    threads = psutil.Process(server.process.pid).num_threads
    url = f"{server.ws_url}/chatroom"
    text = '"' * 490
    with connect(url, compression=None) as sender:
        assert ONLINE.findall(sender.recv(timeout=5)) == ["1"]
        threads_for_one_client = threads()
        frozen_socket = socket.socket()
        frozen_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frozen_socket.connect(("127.0.0.1", server.port))
        with connect(url, sock=frozen_socket, compression=None, max_queue=1, close_timeout=1):
            assert ONLINE.findall(sender.recv(timeout=5)) == ["2"]
            # Talk until the frozen client has been dropped and cut off: then its handler ends
            # and the count falls to 1. The sender reads each of its messages back, so it never
            # falls behind itself.
            online = ["2"]
            for n in range(frames_to_fill_the_kernel_buffers(2500)):
                sender.send(chat_frame(f"{n} {text}"))
                frame = ""
                while not messages_in(frame):
                    frame = sender.recv(timeout=5)
                    online += ONLINE.findall(frame)
                if online[-1] == "1":
                    break
            assert online[-1] == "1", "the frozen client was never cut off"
            # It has still read nothing, yet its handler and writer threads are gone.
            wait_until(
                lambda: threads() <= threads_for_one_client, "the frozen client's threads end"
            )
