"""Step 09: step 08's defences, attacked through nginx, on two servers sharing Redis. Events named
`connect` and `disconnect`, connections that never sign in (or ignore the close), a bookmark too
big for SQLite, a member who never reads but answers the pings.

Through nginx, on the stack the tests share (toolkit.fixtures.shared_stack), but the one that needs
nginx's default read timeout.
"""

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.exceptions import ConnectionClosed

from toolkit.clients import (
    QUEUE,
    SocketIOByHand,
    cut_by_server,
    frames_to_fill_the_kernel_buffers,
    tiny_buffer_socket,
    websocket_by_hand,
)
from toolkit.fixtures import need_tools
from toolkit.launcher import wait_until
from toolkit.people import (
    OK,
    REFUSED,
    create_room,
    messages_until,
    post_form,
    presence_until,
    send_to,
    sign_up,
    texts_of,
    unique,
    user_id,
)
from toolkit.stack import SHARED_SETTINGS, TOOLS, Stack, websocket_from

STEP = "09_production"

need_tools(*TOOLS)  # CI installs them (.ci/run)
pytestmark = pytest.mark.browser_context_args(ignore_https_errors=True)


@pytest.fixture
def stack(shared_stack):
    """Step 09's shared stack (toolkit.fixtures.shared_stack): one a process."""
    return shared_stack


@pytest.mark.parametrize("event", ["disconnect", "connect"])
def test_an_event_named_disconnect_or_connect_hides_no_socket_from_either_server(
    stack, connect, event
):
    owner, bob, carol = (sign_up(stack, unique(prefix)) for prefix in "abc")  # names in order
    room = create_room(stack, owner, members=[bob, carol])
    observer = connect(stack, owner, rooms=[room, "general"])
    bob_socket = connect(stack, bob, rooms=[room, "general"])
    # 42["disconnect",...]: an event. The socket stays connected and in its rooms, so it must
    # stay in what its server and Redis know: presence lists it, and removal takes it out.
    bob_socket.emit(event, {"last_id": 0})
    connect(stack, carol, rooms=[room])
    presence_until(observer, room, [owner.name, bob.name, carol.name])
    # Whichever server nginx gives the removal to finds Bob's socket, in its memory or in Redis.
    post_form(owner.http, stack, f"/rooms/{room}/members/{user_id(stack, bob)}/remove")
    assert send_to(observer, room, "after bob left") == OK
    assert send_to(observer, "general", "to everyone") == OK
    assert "after bob left" not in texts_of(messages_until(bob_socket, "to everyone"))
    assert bob_socket.connect() == '44"Unable to connect"'  # python-socketio's own answer
    assert send_to(bob_socket, "general", "bob is still here") == OK


def test_connections_that_do_not_sign_in_are_closed_by_the_app_server_through_nginx(stack):
    refused = [SocketIOByHand(stack) for _ in range(2)]  # no cookie: 44, "sign in again"
    assert {client.answer for client in refused} == {REFUSED}
    silent = [websocket_from(stack, "127.0.0.1") for _ in range(2)]  # never even ask to connect
    opened = time.monotonic()
    # least_conn spreads them over both app servers; each closes its own after SIGN_IN_TIME. The
    # close frame is the app's, passed on by nginx: nginx itself closes without one (after
    # proxy_read_timeout, when a client does not answer the pings and the app goes quiet: so
    # each connection is read at once, in a thread of its own).
    deadline = opened + SHARED_SETTINGS["SIGN_IN_TIME"] + 5
    websockets = [client.ws for client in refused] + silent
    with ThreadPoolExecutor(len(websockets)) as pool:
        closed = list(
            pool.map(lambda websocket: closed_by_the_app(websocket, deadline), websockets)
        )
    assert closed == [True] * len(websockets)
    print(f"all closed {time.monotonic() - opened:.1f} s after they opened")


def closed_by_the_app(websocket, deadline):
    """Whether the app closes the Engine.IO connection before `deadline` (time.monotonic());
    meanwhile this reads it and answers the pings, as a client that holds on does."""
    try:
        while (left := deadline - time.monotonic()) > 0:
            if websocket.recv(timeout=left) == "2":
                websocket.send("3")
    except ConnectionClosed:
        return websocket.protocol.close_rcvd is not None
    except TimeoutError:
        pass
    return False


def test_a_connection_that_never_signs_in_and_ignores_the_close_is_cut_through_nginx(tmp_path):
    # A stack of its own, with nginx's default proxy_read_timeout (60 s), which would otherwise
    # end such a connection (the shared stack's 2 s would hide the app's cut). A client that
    # ignores the close packet and keeps its connection, silent, holds one of nginx's and one of
    # an app server's (a socket, its greenlets) until then.
    with Stack(STEP, tmp_path, SIGN_IN_TIME=1) as stack:
        clients = [websocket_by_hand(stack) for _ in range(4)]  # never even ask to connect
        received = [bytearray() for _ in clients]
        try:
            wait_until(lambda: all(map(cut_by_server, clients, received)), "the app cut them all")
            assert all(b"\x81\x011" in data for data in received)  # each was sent its close packet
        finally:
            for client in clients:
                client.close()


def test_a_last_id_too_big_for_sqlite_is_refused_and_the_largest_one_joins_in_plain_sight(
    stack, connect
):
    alice, mallory = sign_up(stack, unique("a")), sign_up(stack, unique("m"))  # names in order
    answer = SocketIOByHand(stack, mallory.cookie, {"last_id": 2**63}).answer
    assert answer == '44{"message":"auth.last_id must be a whole number, 0 or more."}'
    # The largest id SQLite holds is accepted: the join answers, presence lists the socket, and it
    # hears the room. (Step 09 joins before it reads the history, and leaves again if that fails.)
    room = create_room(stack, alice, members=[mallory])
    observer = connect(stack, alice, rooms=[room])
    mallory_socket = connect(stack, mallory, rooms=[room], last_id=2**63 - 1)
    presence_until(observer, room, [alice.name, mallory.name])
    assert send_to(observer, room, "hello") == OK
    assert texts_of(messages_until(mallory_socket, "hello")) == ["hello"]


def test_a_member_who_never_reads_is_dropped_through_nginx_and_their_queue_freed(stack, connect):
    sender, frozen = sign_up(stack), sign_up(stack)
    room = create_room(stack, sender, members=[frozen])
    sender_socket = connect(stack, sender)  # a member, not in the room: it reads only its acks
    frozen_socket = connect(
        stack,
        frozen,
        rooms=[room],
        sock=tiny_buffer_socket(stack.https_port, segment=536),
        max_queue=1,  # websockets stops reading the socket at the first unread packet
        ping_interval=None,  # nor does websockets close it for want of WebSocket pongs
    )  # It never reads again, but it sends a pong every second: Engine.IO's ping timeout, which
    # ends a client that does not answer, never ends this one. Only the bound can.
    pongs = threading.Thread(target=send_pongs, args=(frozen_socket.ws,), daemon=True)
    pongs.start()
    known_sockets = f"sockets:{user_id(stack, frozen)}"  # in Redis, for every server
    assert stack.redis().hlen(known_sockets) == 1
    text = "\U0001f600" * 490  # JSON escapes each as two \uXXXX: 6 kB a packet
    # Before the app's queue grows, the kernel's buffers fill on both hops: app to nginx (the
    # app's send buffer), nginx to the client (nginx's). On loopback each grows to megabytes
    # (measured: 2 and 2.8 MB, the member dropped after 1,260 messages); the client's small TCP
    # segments keep nginx's to tens of KB (dropped after 820). A small QUEUE would hardly shorten
    # it, so the stack keeps the default. At most: both hops' buffers, then the queue.
    most = 2 * frames_to_fill_the_kernel_buffers(6000) + QUEUE + 100
    started = time.monotonic()
    try:
        for sent in range(0, most, 20):
            waiting = [{"room": room, "text": f"{sent + n} {text}"} for n in range(20)]
            while waiting:  # until the server took all 20: one it is too busy for goes again
                asked = {sender_socket.emit("send message", m, ack=True): m for m in waiting}
                answers = sender_socket.answers(len(asked))
                assert all(a.get("ok") or "busy" in a["error"] for a in answers.values()), answers
                waiting = [asked[number] for number, answer in answers.items() if "error" in answer]
            if not stack.redis().hlen(known_sockets):  # its server forgot it: it is gone
                break
        else:
            pytest.fail(f"{most} messages later, the frozen member is still there")
        print(f"dropped after {sent + 20} messages, {time.monotonic() - started:.1f} s")
    finally:
        frozen_socket.ws.socket.close()  # at once: a goodbye would wait behind what is unread
        pongs.join()


def send_pongs(websocket):
    """Answer Engine.IO's pings without reading them, once a second, until the socket closes."""
    with contextlib.suppress(ConnectionClosed, OSError):
        while True:
            websocket.send("3")
            time.sleep(SHARED_SETTINGS["PING_INTERVAL"])
