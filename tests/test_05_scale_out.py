"""Step 05: two servers share one chat through a real Redis, and survive Redis going away."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack

import psutil
import pytest
from playwright.sync_api import expect

from toolkit.clients import (
    FLOOD,
    QUEUE,
    SEND_BURST,
    SEND_RATE,
    TOO_FAST,
    Listener,
    SocketIOByHand,
    announce,
    check_no_listener_was_dropped_or_delayed,
    frames_to_fill_the_kernel_buffers,
    messages,
    online_count,
    open_chat,
    say,
    send_past_a_frozen_client,
    socketio_texts,
)
from toolkit.fixtures import need_tools
from toolkit.launcher import (
    ROOT,
    RedisServer,
    accepts,
    free_port,
    path_with_only,
    start_side_by_side,
    wait_until,
)
from toolkit.pages import no_reload

STEP = "05_scale_out"
CHANNEL = "flask-socketio"  # the channel Flask-SocketIO publishes on by default
FAST = {"PRESENCE_INTERVAL": 0.2, "CLOCK_INTERVAL": 0.5}

need_tools("redis-server")


@pytest.fixture
def two_servers(redis_server, tmp_path):
    """Servers A and B, fresh for a test that counts people or stops something."""
    servers = start_side_by_side(STEP, 2, tmp_path, REDIS_URL=redis_server.url, **FAST)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Redis and servers A and B for the tests that do not count people or stop anything."""
    folder = tmp_path_factory.mktemp("redis")
    redis_server = RedisServer(folder)
    redis_server.start()
    servers = []
    try:
        servers = start_side_by_side(STEP, 2, folder, REDIS_URL=redis_server.url, **FAST)
        yield redis_server, *servers
    finally:
        for server in servers:
            server.stop()
        redis_server.stop()


def wait_until_subscribed(redis_server, servers, timeout=30):
    """Return once `servers` clients are subscribed to the chat's channel.

    NUMSUB counts the subscriptions made so far; MONITOR, opened first, shows every command Redis
    runs from then on, so we wake up at each SUBSCRIBE instead of polling.
    """
    client = redis_server.client(socket_timeout=timeout)
    deadline = time.monotonic() + timeout
    with client.monitor() as monitor:
        while client.pubsub_numsub(CHANNEL)[0][1] < servers:
            while not monitor.next_command()["command"].upper().startswith("SUBSCRIBE"):
                assert time.monotonic() < deadline, "the servers did not subscribe again"


# --- in the browser: one chat across two servers ---


@pytest.mark.e2e
def test_message_from_alice_on_server_a_appears_for_bob_on_server_b_and_back(two_users, shared):
    _, server_a, server_b = shared
    alice, bob = two_users
    open_chat(alice, server_a, "Alice")
    open_chat(bob, server_b, "Bob")
    expect(alice.locator("#server")).to_have_text(f"127.0.0.1:{server_a.port}")
    expect(bob.locator("#server")).to_have_text(f"127.0.0.1:{server_b.port}")
    with no_reload(alice), no_reload(bob):
        say(alice, "hello from A")
        expect(messages(bob)).to_have_text([re.compile(r"^Alice \d\d:\d\d hello from A$")])
        say(bob, "hello from B")
        for page in (alice, bob):
            expect(messages(page)).to_have_text(
                [re.compile("^Alice .* hello from A$"), re.compile("^Bob .* hello from B$")]
            )


@pytest.mark.e2e
def test_announce_py_reaches_pages_on_both_servers_as_text(two_users, shared):
    redis_server, server_a, server_b = shared
    alice, bob = two_users
    open_chat(alice, server_a, "Alice")
    open_chat(bob, server_b, "Bob")
    text = "<b>The chat closes at six</b>"
    with no_reload(alice), no_reload(bob):
        done = announce(redis_server.url, text)
        assert done.returncode == 0, done.stderr
        assert f"pages of 2 server(s) listening on {redis_server.url}" in done.stdout
        for page in (alice, bob):
            expect(page.get_by_role("status", name="Announcement")).to_have_text(text)
            expect(page.locator("#announcement b")).to_have_count(0)


@pytest.mark.e2e
def test_pages_of_a_killed_server_leave_the_count_within_seconds(two_users, two_servers):
    server_a, server_b = two_servers
    alice, bob = two_users
    open_chat(alice, server_a, "Alice")
    open_chat(bob, server_b, "Bob")
    expect(online_count(alice)).to_have_text("2")
    with no_reload(alice):
        server_b.stop()  # SIGKILL: no disconnect handler runs, only its key's expiry tells
        expect(bob.locator("#status")).to_have_text("disconnected")
        # The key lives 3 beats of 0.2 s; the generous timeout is for a busy machine.
        expect(online_count(alice)).to_have_text("1", timeout=5_000)


@pytest.mark.e2e
def test_without_redis_each_server_serves_its_own_pages_and_after_it_the_chat_is_one_again(
    new_user, redis_server, two_servers
):
    server_a, server_b = two_servers
    alice, carol, bob = new_user(), new_user(), new_user()
    open_chat(alice, server_a, "Alice")
    open_chat(carol, server_a, "Carol")
    open_chat(bob, server_b, "Bob")
    for page in (alice, carol, bob):
        expect(online_count(page)).to_have_text("3")

    with no_reload(alice), no_reload(carol), no_reload(bob):
        redis_server.stop()
        # Each server now counts its own pages only, and its log says why.
        for page, count in ((alice, "2"), (carol, "2"), (bob, "1")):
            expect(online_count(page)).to_have_text(count)
        for server in (server_a, server_b):
            assert f"Redis at {redis_server.url} does not answer" in server.output()
        for page in (alice, carol, bob):
            expect(page.locator("#status")).to_have_text("connected")

        say(alice, "during the outage")
        say(bob, "Bob, alone on B")
        expect(alice.get_by_label("Message")).to_have_value("")  # accepted: Alice is not told
        for page in (alice, carol):
            expect(messages(page)).to_have_text([re.compile("during the outage$")])
        expect(messages(bob)).to_have_text([re.compile("Bob, alone on B$")])
        assert "Cannot publish to redis... giving up" in server_a.output()

        redis_server.start()
        wait_until_subscribed(redis_server, 2)
        for page in (alice, carol, bob):
            expect(online_count(page)).to_have_text("3")
        assert "answers again" in server_a.output()
        say(bob, "after the outage")
        say(carol, "welcome back")
        after = [re.compile("after the outage$"), re.compile("welcome back$")]
        for page in (alice, carol):
            expect(messages(page)).to_have_text([re.compile("during the outage$"), *after])
        # Nothing sent during the outage is delivered later: pub/sub keeps no messages.
        expect(messages(bob)).to_have_text([re.compile("Bob, alone on B$"), *after])


# --- fast tier: no browser ---


def test_an_event_named_connect_brings_no_fresh_rate_limit(shared):
    _, server_a, _ = shared
    alice = SocketIOByHand(server_a)
    try:
        started = time.monotonic()
        for burst in range(2):
            for n in range(SEND_BURST):
                alice.say(f"{burst} {n}", "Alice", ack=True)
            alice.emit("connect", {})  # 42["connect",{}]: an event; the socket stays connected
        answers = list(alice.answers(2 * SEND_BURST).values())
        elapsed = time.monotonic() - started
    finally:
        alice.close()
    assert answers.count({"ok": True}) <= SEND_BURST + elapsed * SEND_RATE + 1


def test_a_sender_over_the_rate_limit_alone_is_answered_and_nothing_more_is_broadcast(shared):
    _, server_a, server_b = shared
    alice, carol, bob = SocketIOByHand(server_a), SocketIOByHand(server_a), SocketIOByHand(server_b)
    try:
        started = time.monotonic()
        asked = [alice.say(f"m{n}", "Alice", ack=True) for n in range(2 * SEND_BURST)]
        by_number = alice.answers(2 * SEND_BURST)
        answers = [by_number[number] for number in asked]
        allowed = SEND_BURST + SEND_RATE * (time.monotonic() - started)
        accepted = [f"m{n}" for n, answer in enumerate(answers) if answer == {"ok": True}]
        assert [answer for answer in answers if answer != {"ok": True}] == [{"error": TOO_FAST}] * (
            2 * SEND_BURST - len(accepted)
        )
        assert SEND_BURST <= len(accepted) <= allowed
        # Carol's message, published after all of Alice's, closes what Bob receives from A.
        carol.say("end", "Carol")
        received = [bob.next_event("new message")["text"]]
        while received[-1] != "end":
            received.append(bob.next_event("new message")["text"])
        # (In any order: python-socketio runs each event's handler in a thread of its own.)
        assert sorted(received[:-1]) == sorted(accepted)
    finally:
        for client in (alice, carol, bob):
            client.close()


def test_a_flood_from_one_client_drops_and_delays_no_listener(shared):
    """The flood: 20 listeners (10 on each server), one sends FLOOD events at once."""
    _, server_a, server_b = shared
    with ExitStack() as stack:

        def open_client(server):
            client = SocketIOByHand(server)
            stack.callback(client.close)
            return client

        listeners = [
            Listener(open_client(server).receive, socketio_texts)
            for server in [server_a, server_b] * 10
        ]
        flooder, prober = open_client(server_a), open_client(server_b)
        flood_started = time.monotonic()
        for n in range(FLOOD):
            flooder.say(f"flood {n}")  # no acknowledgement asked: an attacker reads nothing
        assert flooder.answer_to(flooder.say("one more", ack=True)) == {"error": TOO_FAST}
        probe_sent = time.monotonic()
        prober.say("probe")
        while flooder.next_event("new message")["text"] != "probe":  # still in the room
            pass
        check_no_listener_was_dropped_or_delayed(
            listeners, flood_started, probe_sent, SEND_BURST, SEND_RATE
        )


@pytest.mark.slow
def test_a_client_that_never_reads_is_dropped_and_the_server_memory_stays_bounded(
    redis_server, tmp_path
):
    """A frozen client on server A, and a sender on server B: every message, 6 kB on the wire,
    reaches A through Redis. 15 MB in all; the frozen client is dropped by A once it is QUEUE
    packets behind, and A's memory stays flat.
    """
    server_a, server_b = start_side_by_side(
        STEP, 2, tmp_path, REDIS_URL=redis_server.url, **FAST, SEND_RATE=0
    )
    try:
        dropped_after, grown = send_past_a_frozen_client(server_a, server_b, total=2500)
    finally:
        for server in (server_a, server_b):
            server.stop()
    assert dropped_after is not None, "the frozen client was never dropped"
    assert dropped_after <= frames_to_fill_the_kernel_buffers(6000) + QUEUE + 100
    assert "packets behind" in server_a.output()
    # Without the check A grew by 12 MB here; with it, by less than 1 MB.
    assert grown < 5 * 2**20, f"server A grew by {grown / 2**20:.1f} MB"


def test_announce_py_without_redis_says_so_and_fails():
    done = announce(f"redis://127.0.0.1:{free_port()}/0", "hello")
    assert done.returncode == 1
    assert "does not answer" in done.stderr
    assert "nothing was announced" in done.stderr


def test_long_polling_is_refused_so_no_sticky_sessions_are_needed(shared):
    _, server_a, _ = shared
    url = f"{server_a.url}/socket.io/?EIO=4&transport=polling"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 400


def make_step_05(**variables):
    """`make step-05` with these variables: how a learner starts the step (honcho, Procfile)."""
    arguments = [f"{name}={value}" for name, value in variables.items()]
    return [shutil.which("make"), "-s", "step-05", *arguments]


def test_make_step_05_without_redis_server_says_how_to_install_it(tmp_path):
    # A PATH with what make itself needs, and no redis-server.
    tools = path_with_only(tmp_path / "bin", "sh", "install", "mkdir", "touch")
    done = subprocess.run(
        make_step_05(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", PORT=free_port()),
        cwd=ROOT,
        env={**os.environ, "PATH": tools},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "there is no redis-server here" in done.stderr
    assert "sudo apt-get install redis-server" in done.stderr
    assert "brew install redis" in done.stderr


def free_port_pair():
    """A free port whose successor is free too (make step-05 serves on PORT and PORT+1)."""
    while True:
        port = free_port()
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port + 1))
            return port


@pytest.mark.slow
def test_make_step_05_starts_two_servers_with_a_private_redis_and_ctrl_c_stops_them_all(tmp_path):
    port = free_port_pair()
    log = tmp_path / "make.log"
    run = subprocess.Popen(
        make_step_05(PORT=port, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    children = []
    try:
        for server_port in (port, port + 1):
            wait_until(lambda p=server_port: accepts(p), f"a server on port {server_port}", 30)
        output = log.read_text()
        assert "starting a private one" in output
        assert "Ctrl-C stops everything" in output
        children = psutil.Process(run.pid).children(recursive=True)
        redis_program = os.path.realpath(shutil.which("redis-server"))
        assert [child.exe() for child in children].count(redis_program) == 1
        servers = [child for child in children if "app.py" in child.cmdline()]
        assert len(servers) == 2
        for server_port in (port, port + 1):
            page = urllib.request.urlopen(f"http://127.0.0.1:{server_port}/", timeout=5).read()
            assert f"127.0.0.1:{server_port}".encode() in page

        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        # make ends as a program does on Ctrl-C ("Interrupt"), or without error if honcho was done
        # first (130 from honcho is no error).
        assert run.wait(timeout=20) in (0, -signal.SIGINT)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        output = log.read_text()
        assert "SIGINT received" in output  # honcho's line; then it stops every process
        assert "Traceback" not in output
    finally:
        for process in [run, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
