"""What the chat page of steps 03, 04 and 05 does the same way, whatever carries it (htmx over a
plain WebSocket, Socket.IO, Socket.IO across two servers through Redis): one test per behaviour,
run on each of the three steps. Alice and Bob open the chat on servers[0] and servers[1]: the same
server in steps 03 and 04, servers A and B in step 05."""

import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from toolkit.clients import (
    ROOM_CHECK,
    Listener,
    SocketIOByHand,
    messages,
    online_count,
    online_counts,
    open_chat,
    say,
    socketio_counts,
)
from toolkit.fixtures import need_tools
from toolkit.launcher import RedisServer, StepServer, start_side_by_side, wait_until
from toolkit.pages import no_reload

STEPS = ["03_chat", "04_socketio_broadcast", "05_scale_out"]


@pytest.fixture(params=STEPS)
def start_chat(request, tmp_path):
    """`servers = start_chat(**settings)`: the step's servers, with its Redis for step 05."""
    step = request.param
    with ExitStack() as stack:

        def start(**env):
            if step == "05_scale_out":
                need_tools("redis-server")
                redis = stack.enter_context(RedisServer(tmp_path))
                env.update(REDIS_URL=redis.url, PRESENCE_INTERVAL=0.2, CLOCK_INTERVAL=0.5)
                servers = start_side_by_side(step, 2, tmp_path, **env)
            else:
                servers = [stack.enter_context(StepServer(step, tmp_path, **env))] * 2
            for server in set(servers):
                stack.callback(server.stop)
            return servers

        start.step = step
        yield start


@pytest.mark.e2e
def test_online_count_shows_two_then_one_when_bob_leaves(two_users, start_chat):
    server_a, server_b = start_chat()
    alice, bob = two_users
    open_chat(alice, server_a, "Alice", online=1)
    open_chat(bob, server_b, "Bob", online=2)
    expect(online_count(alice)).to_have_text("2")
    with no_reload(alice):
        bob.close()
        expect(online_count(alice)).to_have_text("1")


# What the Message box holds after a refused send: step 03's page empties it as the frame leaves,
# the Socket.IO pages only when the server accepts the message.
KEPT_AFTER_REFUSAL = {"03_chat": "", "04_socketio_broadcast": "three", "05_scale_out": "three"}


@pytest.mark.e2e
def test_a_sender_over_the_rate_limit_alone_sees_an_alert_and_nothing_more_is_broadcast(
    two_users, start_chat
):
    server_a, server_b = start_chat(SEND_BURST=2, SEND_RATE=0.1)  # two in a row, then 1 in 10 s
    alice, bob = two_users
    open_chat(alice, server_a, "Alice", online=1)
    open_chat(bob, server_b, "Bob", online=2)
    for text in ["one", "two", "three"]:
        say(alice, text)
    expect(alice.get_by_role("alert")).to_have_text(
        "Slow down: at most 2 messages in a row, then 0.1 a second. That one was not sent."
    )
    expect(alice.get_by_label("Message")).to_have_value(KEPT_AFTER_REFUSAL[start_chat.step])
    for page in (alice, bob):
        expect(messages(page)).to_have_text([re.compile("one$"), re.compile("two$")])
    expect(bob.get_by_role("alert")).to_have_text("")


def raw_client(server):
    """Step 03's protocol: a plain WebSocket; the counts are in its frames."""
    ws = connect(f"{server.ws_url}/chatroom", close_timeout=1, legacy=True)
    return ws.close, Listener(ws.recv, online_counts)


def socketio_client(server):
    client = SocketIOByHand(server)
    return client.close, Listener(client.receive, socketio_counts)


# How each step's clients connect, and how many counts a client may receive in `settled` seconds:
# one per look at the room (every ROOM_CHECK), not one per join. In step 05, each server looks at
# its room and its own server's heartbeat (every 0.2 s here) sends one too: three a look at most.
CLIENTS = {"03_chat": raw_client, "04_socketio_broadcast": socketio_client}
CLIENTS["05_scale_out"] = socketio_client
MOST_COUNTS = {
    "03_chat": lambda settled: settled / ROOM_CHECK + 2,
    "04_socketio_broadcast": lambda settled: settled / ROOM_CHECK + 2,
    "05_scale_out": lambda settled: 3 * (settled / ROOM_CHECK + 1),
}


@pytest.mark.e2e
def test_fifty_clients_joining_at_once_leave_every_page_on_the_exact_count(page, start_chat):
    servers = start_chat()
    open_chat(page, servers[0], online=1)
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=50) as pool:
        started = time.monotonic()
        # Half on each server (in steps 03 and 04 both are the one server).
        clients = list(pool.map(lambda n: CLIENTS[start_chat.step](servers[n % 2]), range(50)))
        for close, _ in clients:
            stack.callback(close)
        listeners = [listener for _, listener in clients]
        expect(online_count(page)).to_have_text("51")
        wait_until(lambda: all(ear.latest() == 51 for ear in listeners), "every client reads 51")
        settled = time.monotonic() - started
        most = MOST_COUNTS[start_chat.step](settled)
        assert max(len(ear.items) for ear in listeners) <= most
        list(pool.map(lambda client: client[0](), clients[:25]))
        expect(online_count(page)).to_have_text("26")
        wait_until(lambda: all(ear.latest() == 26 for ear in listeners[25:]), "the rest read 26")
