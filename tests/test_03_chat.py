"""Step 03: the chat room under hostile input, other sites, floods, frozen clients, restarts."""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import psutil
import pytest
from playwright.sync_api import expect
from simple_websocket import Client, ConnectionClosed
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from toolkit.clients import (
    FLOOD,
    ONLINE,
    SEND_BURST,
    SEND_RATE,
    TOO_FAST,
    Listener,
    chat_frame,
    check_no_listener_was_dropped_or_delayed,
    frames_to_fill_the_kernel_buffers,
    message_texts,
    messages,
    messages_in,
    next_alert,
    next_messages,
    online_count,
    open_chat,
    say,
    texts,
    tiny_buffer_socket,
)
from toolkit.launcher import StepServer, wait_until
from toolkit.pages import RECONNECT_TIMEOUT, XSS, no_reload

STEP = "03_chat"
MAX_MESSAGE_BYTES = 64 * 1024
PRESENCE_DELAY = 0.2
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


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """One server for the tests that neither count people nor need history: HISTORY=0."""
    with StepServer(STEP, tmp_path_factory.mktemp("logs"), HISTORY=0) as server:
        yield server


def chatroom(server):
    return f"{server.ws_url}/chatroom"


# --- in the browser: two users ---


@pytest.mark.e2e
def test_message_from_alice_appears_for_alice_and_bob_without_reload(two_users, serve):
    server = serve(STEP)
    alice, bob = two_users
    open_chat(alice, server, "Alice", online=1)
    open_chat(bob, server, "Bob", online=2)
    with no_reload(alice), no_reload(bob):
        say(alice, "Hello, Bob!")
        for page in (alice, bob):
            expect(messages(page)).to_have_text([re.compile(r"^Alice \d\d:\d\d Hello, Bob!$")])
    expect(alice.get_by_label("Message")).to_have_value("")
    expect(alice.get_by_label("Name")).to_have_value("Alice")


@pytest.mark.e2e
def test_html_in_a_message_shows_as_text_and_nothing_runs(two_users, serve):
    server = serve(STEP)
    alice, bob = two_users
    dialogs = []
    for online, page in enumerate((alice, bob), start=1):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        open_chat(page, server, online=online)
    say(alice, XSS)
    say(alice, "after the trap")  # the image, had it been HTML, errors long before this arrives
    for page in (alice, bob):
        expect(messages(page)).to_have_count(2)
        expect(messages(page).first).to_contain_text(XSS)
        expect(page.get_by_role("log").locator("img")).to_have_count(0)
    assert dialogs == []


@pytest.mark.e2e
def test_each_bad_input_shows_its_alert_to_alice_only_and_nothing_to_bob(two_users, serve):
    server = serve(STEP)
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
    open_chat(alice, server, online=1)
    open_chat(bob, server, online=2)
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
        expect(messages(page)).to_have_text([re.compile("fixed it$")])
    expect(bob.get_by_role("alert")).to_have_text("")


@pytest.mark.e2e
def test_a_newcomer_first_sees_the_earlier_messages_in_order(two_users, serve):
    server = serve(STEP)
    alice, bob = two_users
    open_chat(alice, server, "Alice", online=1)
    for text in ["one", "two", "three"]:
        say(alice, text)
    expect(messages(alice)).to_have_count(3)
    open_chat(bob, server, online=2)
    expect(messages(bob)).to_have_text([re.compile(f"{text}$") for text in ["one", "two", "three"]])
    say(alice, "four")
    expect(messages(bob)).to_have_count(4)


@pytest.mark.e2e
def test_both_pages_reconnect_by_themselves_after_a_server_restart(two_users, serve):
    server = serve(STEP)
    alice, bob = two_users
    open_chat(alice, server, "Alice", online=1)
    open_chat(bob, server, "Bob", online=2)
    say(alice, "before the restart")
    expect(messages(bob)).to_have_count(1)
    with no_reload(alice), no_reload(bob):
        for page in (alice, bob):
            # A marker only the new server can overwrite: "2" again means both pages are back.
            page.evaluate("document.getElementById('online').textContent = 'restarting'")
        server.restart()
        for page in (alice, bob):
            expect(online_count(page)).to_have_text("2", timeout=RECONNECT_TIMEOUT)
        say(bob, "after the restart")
        for page in (alice, bob):
            expect(messages(page)).to_have_text(
                [re.compile("before the restart$"), re.compile("after the restart$")]
            )


# --- fast tier: Python WebSocket clients against the subprocess ---


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:1", "https://localhost", "null"]
)
def test_socket_opened_from_another_site_is_refused_with_403(chat_server, origin):
    with pytest.raises(InvalidStatus) as refused:
        connect(chatroom(chat_server), origin=origin)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("own_origin", [True, False], ids=["the page's origin", "no Origin"])
def test_socket_from_the_page_itself_or_a_script_without_origin_is_accepted(
    chat_server, own_origin
):
    origin = chat_server.url if own_origin else None
    with connect(chatroom(chat_server), origin=origin) as ws:
        ws.send(chat_frame("hello", name="Alice"))
        assert next_messages(ws) == [("Alice", "hello")]


def test_five_clients_sending_100_messages_in_all_each_receive_all_100_in_one_order(serve):
    # No rate limit: each client sends 20 in a burst. A queue that holds all 100 and the counts:
    # nobody here is slow, though a busy machine may keep a reader waiting.
    server = serve(STEP, SEND_RATE=0, QUEUE=200)

    def chat(n):
        for i in range(20):
            clients[n].send(chat_frame(f"{n}-{i}", name=f"client {n}"))
        received = []
        while len(received) < 100:
            received += texts(next_messages(clients[n]))
        return received

    with ExitStack() as stack, ThreadPoolExecutor() as pool:
        clients = [stack.enter_context(connect(chatroom(server))) for _ in range(5)]
        # result() re-raises what went wrong in a client's thread.
        jobs = [pool.submit(chat, n) for n in range(5)]
        received = [job.result(timeout=30) for job in jobs]
    expected = {f"{n}-{i}" for n in range(5) for i in range(20)}
    assert sorted(received[0]) == sorted(expected)
    for n in range(1, 5):
        assert received[n] == received[0]
    for n in range(5):  # and each sender's own messages stay in the order it sent them
        assert [text for text in received[0] if text.startswith(f"{n}-")] == [
            f"{n}-{i}" for i in range(20)
        ]


def test_a_newcomer_receives_the_last_messages_then_live_ones(serve):
    server = serve(STEP, HISTORY=5)
    with connect(chatroom(server)) as alice:
        for i in range(8):
            alice.send(chat_frame(f"m{i}"))
            next_messages(alice)
        with connect(chatroom(server)) as bob:
            assert texts(next_messages(bob)) == ["m3", "m4", "m5", "m6", "m7"]
            alice.send(chat_frame("m8"))
            assert texts(next_messages(bob)) == ["m8"]


def test_a_page_joining_while_messages_flow_misses_none_and_sees_none_twice(serve):
    history, total, after_bob = 50, 600, 100
    # A queue longer than the burst: here nobody is slow, the test is about the moment Bob joins.
    server = serve(STEP, HISTORY=history, QUEUE=2 * total, SEND_RATE=0)
    history_is_full = threading.Event()  # the server has broadcast more than the history holds
    bob_joined = threading.Event()

    def talk(alice):
        for n in range(total):
            if n == total - after_bob:  # the last messages wait for Bob: they must reach him live
                assert bob_joined.wait(timeout=10)
            alice.send(chat_frame(str(n)))

    def listen(alice):  # Alice reads her own messages too, or she would be dropped
        received = 0
        while received < total:
            received += len(next_messages(alice))
            if received > history:
                history_is_full.set()

    with connect(chatroom(server)) as alice, ThreadPoolExecutor() as pool:
        jobs = [pool.submit(job, alice) for job in (talk, listen)]
        assert history_is_full.wait(timeout=10)
        with connect(chatroom(server)) as bob:
            seen = [int(text) for text in texts(next_messages(bob))]  # the history first
            bob_joined.set()
            while seen[-1] != total - 1:
                seen += [int(text) for text in texts(next_messages(bob))]
        for job in jobs:
            job.result(timeout=10)
    assert seen == list(range(seen[0], total))
    assert seen[0] > 0  # the history Bob received started after the first messages
    assert len(seen) > history  # and live messages followed it


def test_each_bad_frame_gets_an_alert_for_the_sender_only_and_nothing_is_broadcast(chat_server):
    with connect(chatroom(chat_server)) as alice, connect(chatroom(chat_server)) as bob:
        for frame, alert in BAD_FRAMES.values():
            alice.send(frame)
            assert alert in next_alert(alice)
        # The first message Bob receives is the good one that follows: nothing came before it.
        alice.send(chat_frame("good"))
        assert texts(next_messages(bob)) == ["good"]


def test_message_of_exactly_500_characters_is_broadcast_and_a_blank_name_is_anonymous(
    chat_server,
):
    with connect(chatroom(chat_server)) as ws:
        ws.send(json.dumps({"name": "  ", "chat_message": "  " + "y" * 500 + "  "}))
        assert next_messages(ws) == [("anonymous", "y" * 500)]


def test_html_in_name_and_message_is_escaped_in_the_broadcast_fragment(chat_server):
    with connect(chatroom(chat_server)) as ws:
        ws.send(chat_frame(XSS, name="<b>Mallory</b>"))
        frame = ws.recv(timeout=5)
        while "message" not in frame:
            frame = ws.recv(timeout=5)
    assert "<img" not in frame and "<b>Mallory" not in frame
    assert "&lt;img src=x onerror=alert(1)&gt;" in frame
    assert messages_in(frame) == [("<b>Mallory</b>", XSS)]


def test_oversized_frame_closes_only_that_connection_with_1009(chat_server):
    with connect(chatroom(chat_server)) as bystander:
        # simple-websocket's client sees the close at once (see tests/test_01_echo.py).
        ws = Client.connect(chatroom(chat_server))
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        # The count and the alert may come first; the close must come within seconds. (A loop
        # without an end would wait for pytest's timeout on a step without the limit.)
        deadline = time.monotonic() + 10
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() < deadline:
                ws.receive(timeout=1)
        assert closed.value.reason == 1009
        bystander.send(chat_frame("still chatting"))
        assert texts(next_messages(bystander)) == ["still chatting"]


def test_a_flood_from_one_client_drops_and_delays_no_listener(chat_server):
    """The flood: 20 listeners, one client sends FLOOD frames as fast as it can."""
    with ExitStack() as stack:

        def open_socket():
            return stack.enter_context(connect(chatroom(chat_server), compression=None))

        listeners = [Listener(open_socket().recv, message_texts) for _ in range(20)]
        flooder, prober = open_socket(), open_socket()
        flood_started = time.monotonic()
        for n in range(FLOOD):
            flooder.send(chat_frame(f"flood {n}"))
        assert next_alert(flooder) == TOO_FAST
        probe_sent = time.monotonic()
        prober.send(chat_frame("probe"))
        # The flooder stays in the room, and was told once, not once per frame it sent: told
        # again only after a frame that the refilling bucket let through had cleared the alert.
        received = [flooder.recv(timeout=5)]
        while "probe" not in texts(messages_in(received[-1])):
            received.append(flooder.recv(timeout=5))
        told_again = sum(TOO_FAST in frame for frame in received)
        assert told_again <= SEND_RATE * (time.monotonic() - flood_started)
        check_no_listener_was_dropped_or_delayed(
            listeners, flood_started, probe_sent, SEND_BURST, SEND_RATE
        )


def test_after_a_pause_a_limited_sender_is_heard_again_and_its_alert_clears(serve):
    server = serve(STEP, SEND_BURST=1, SEND_RATE=1)  # one in a row, then one a second
    with connect(chatroom(server)) as alice:
        # Back to back: the second frame comes long before the bucket holds a token again.
        alice.send(chat_frame("one"))
        alice.send(chat_frame("two"))
        assert texts(next_messages(alice)) == ["one"]
        assert next_alert(alice) == (
            "Slow down: at most 1 messages in a row, then 1 a second. That one was not sent."
        )
        time.sleep(1)  # the pause: the bucket refills with time
        alice.send(chat_frame("three"))
        assert next_alert(alice) == ""  # the alert is cleared, then the message broadcast
        assert texts(next_messages(alice)) == ["three"]


@pytest.mark.slow
def test_a_client_that_never_reads_costs_the_others_nothing_and_is_dropped_with_1013(serve):
    # QUEUE well above the bursts of 10 below; DROP_GRACE longer than the test, which reads the
    # frozen client again at the end (the next test never does).
    server = serve(STEP, QUEUE=50, DROP_GRACE=60, SEND_RATE=0)
    url = chatroom(server)
    # The frozen client: a tiny receive buffer, no compression, and websockets stops reading the
    # socket once it holds one unread frame. The server's writes to it soon block.
    text = '"' * 490  # each quote is escaped to 5 bytes: about 2.5 kB per fragment
    count = frames_to_fill_the_kernel_buffers(2500)
    with (
        connect(
            url,
            sock=tiny_buffer_socket(server.port),
            compression=None,
            max_queue=1,
            close_timeout=1,
        ) as frozen,
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


@pytest.mark.slow
def test_a_client_that_never_reads_again_is_cut_off_and_its_threads_end(serve):
    server = serve(STEP, QUEUE=5, DROP_GRACE=0.2, SEND_RATE=0)
    threads = psutil.Process(server.process.pid).num_threads
    url = chatroom(server)
    text = '"' * 490
    with connect(url, compression=None) as sender:
        assert ONLINE.findall(sender.recv(timeout=5)) == ["1"]
        threads_for_one_client = threads()
        with connect(
            url,
            sock=tiny_buffer_socket(server.port),
            compression=None,
            max_queue=1,
            close_timeout=1,
        ):
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
            # The new count comes up to 0.2 s after the drop: possibly after the last frame. (A
            # recv that times out here: never dropped.)
            while online[-1] != "1":
                online += ONLINE.findall(sender.recv(timeout=5))
            # It has still read nothing, yet its threads are gone: the handler ends within a
            # second of the drop, and cuts the connection DROP_GRACE later.
            wait_until(
                lambda: threads() <= threads_for_one_client, "the frozen client's threads end"
            )
