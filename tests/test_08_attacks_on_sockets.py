"""Step 08's defences of its sockets, each attacked as its README's table says: events named
`connect` and `disconnect`, a bookmark too big for SQLite, connections that never sign in (and
ignore the close), a member who never reads. Step 07 has none of them: notebooks/08_under_attack
shows each attack working there.

Where Socket.IO's handling is the point, the app runs in this process (toolkit.inprocess), spoken
to packet by packet; where Engine.IO's connections, threads and TCP are, `python app.py`.
"""

import json

import psutil
import pytest
import requests
from websockets.sync.client import connect as open_websocket

from toolkit.clients import (
    QUEUE,
    cut_by_server,
    engine_io_url,
    frames_to_fill_the_kernel_buffers,
    masked_frame,
    socketio_by_hand,
    tiny_buffer_socket,
    websocket_by_hand,
)
from toolkit.launcher import chat_server, wait_until
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

STEP = "08_under_attack"


@pytest.fixture(scope="module")
def chat(in_process):
    """The step in this process, with no rate limit."""
    return in_process(STEP, SEND_RATE=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py`, with no rate limit."""
    with chat_server(STEP, tmp_path_factory.mktemp("server"), SEND_RATE=0) as running:
        yield running


@pytest.mark.parametrize("event", ["disconnect", "connect"])
def test_an_event_named_disconnect_or_connect_hides_no_socket(chat, connect, event):
    owner, bob, carol = (sign_up(chat, unique(prefix)) for prefix in "abc")  # names in order
    room = create_room(chat, owner, members=[bob, carol])
    observer = connect(chat, owner, rooms=[room, "general"])
    bob_socket = connect(chat, bob, rooms=[room, "general"])
    bob_socket.emit(event, {"last_id": 0})  # 42["disconnect",...]: an event, the socket stays
    assert bob_socket.connect() == '44"Unable to connect"'  # python-socketio's own answer
    assert send_to(bob_socket, "general", "bob is here") == OK  # his events run in order
    connect(chat, carol, rooms=[room])
    presence_until(observer, room, [owner.name, bob.name, carol.name])
    post_form(owner.http, chat, f"/rooms/{room}/members/{user_id(chat, bob)}/remove")
    assert send_to(observer, room, "after bob left") == OK
    assert send_to(observer, "general", "to everyone") == OK
    assert "after bob left" not in texts_of(messages_until(bob_socket, "to everyone"))


def test_a_last_id_too_big_for_sqlite_is_refused(chat, connect):
    alice, mallory = sign_up(chat, unique("a")), sign_up(chat, unique("m"))  # names in order
    answer = socketio_by_hand(chat, mallory.cookie, {"last_id": 2**63}).answer
    assert answer == '44{"message":"auth.last_id must be a whole number, 0 or more."}'
    # The largest id SQLite holds is accepted: the join answers, presence lists the socket, and
    # it hears the room.
    room = create_room(chat, alice, members=[mallory])
    observer = connect(chat, alice, rooms=[room])
    mallory_socket = connect(chat, mallory, rooms=[room], last_id=2**63 - 1)
    presence_until(observer, room, [alice.name, mallory.name])
    assert send_to(observer, room, "hello") == OK
    assert texts_of(messages_until(mallory_socket, "hello")) == ["hello"]


def test_connections_that_do_not_sign_in_are_closed_and_free_their_threads(tmp_path):
    # A server of its own, to count its threads.
    with chat_server(STEP, tmp_path, SIGN_IN_TIME=1) as server:
        threads = psutil.Process(server.process.pid).num_threads
        before = threads()
        refused = [socketio_by_hand(server) for _ in range(15)]  # no cookie: 44, "sign in again"
        silent = [  # never even ask to connect
            open_websocket(engine_io_url(server), close_timeout=0.1, legacy=True) for _ in range(15)
        ]
        assert {socket.answer for socket in refused} == {REFUSED}
        opened = threads()
        assert opened >= before + 60  # two a connection
        sockets = [socket.ws for socket in refused] + silent
        wait_until(lambda: all(socket.protocol.close_rcvd for socket in sockets), "all closed")
        for socket in sockets:  # Werkzeug keeps a connection until its client drops it
            socket.close()
        # Measured: one thread a connection is freed (the other lingers in Werkzeug).
        wait_until(lambda: threads() <= opened - 25, f"{opened} threads, still {threads()}")


@pytest.mark.parametrize("upgraded", [False, True], ids=["websocket", "polling-then-websocket"])
def test_a_connection_that_never_signs_in_and_ignores_the_close_is_cut_and_frees_its_threads(
    tmp_path, upgraded
):
    # A server of its own, to count its threads. A client that ignores the close packet (and the
    # close frame after it) and keeps its TCP connection, silent: Werkzeug would wait on it for a
    # next request, and simple-websocket for a frame, as long as the client likes.
    count = 10
    with chat_server(STEP, tmp_path, SIGN_IN_TIME=2) as server:
        threads = psutil.Process(server.process.pid).num_threads
        before = threads()
        clients = [never_signing_in(server, upgraded) for _ in range(count)]
        received = [bytearray() for _ in clients]
        # Each connection holds a thread in Werkzeug, simple-websocket's reader, Engine.IO's
        # writer, and one that waits to send a ping (25 s: it outlives the test).
        wait_until(lambda: threads() >= before + 4 * count, "four threads a connection")
        opened = threads()
        try:
            wait_until(
                lambda: all(map(cut_by_server, clients, received)), "the server cut them all"
            )
            assert all(b"\x81\x011" in data for data in received)  # each was sent its close packet
            # The close ended the writers (one a connection); the cut ends Werkzeug's and
            # simple-websocket's (two more). The bound lies between, clear of a thread or two
            # that start or end meanwhile.
            left = opened - 2 * count
            wait_until(lambda: threads() <= left, f"{threads()} threads, not {left}")
        finally:
            for client in clients:
                client.close()


def never_signing_in(server, upgraded):
    """A raw Engine.IO WebSocket (upgraded from long-polling, if `upgraded`) that never sends
    `40`: open, then silent."""
    if not upgraded:
        return websocket_by_hand(server)
    opened = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling").text
    sid = json.loads(opened[1:])["sid"]  # 0{"sid":...}
    sock = websocket_by_hand(server, f"EIO=4&transport=websocket&sid={sid}")
    sock.sendall(masked_frame("2probe"))
    answer = b""
    while b"3probe" not in answer:
        answer += sock.recv(4096)
    sock.sendall(masked_frame("5"))  # upgraded
    return sock


def test_a_member_who_never_reads_is_dropped_and_their_queue_freed(server, connect):
    sender, frozen = sign_up(server, unique("a")), sign_up(server, unique("b"))
    room = create_room(server, sender, members=[frozen])
    sender_socket = connect(server, sender, rooms=[room])
    frozen_socket = open_websocket(
        engine_io_url(server),
        sock=tiny_buffer_socket(server.port),
        additional_headers={"Cookie": frozen.cookie},
        compression=None,  # deflated, 500 times the same character would be a few bytes
        max_queue=1,  # websockets stops reading the socket at the first unread packet
        close_timeout=0.1,
        legacy=True,
    )
    try:
        frozen_socket.send("40")
        frozen_socket.send(f'42["join",{{"room":"{room}"}}]')
        presence_until(sender_socket, room, [sender.name, frozen.name])
        text = "\U0001f600" * 490  # JSON escapes each as two \uXXXX: 6 kB a packet
        most = frames_to_fill_the_kernel_buffers(6000) + QUEUE + 100
        for sent in range(0, most, 20):
            for n in range(20):
                sender_socket.emit("send message", {"room": room, "text": f"{sent + n} {text}"})
            people = [
                data["names"]
                for name, data in (sender_socket.event() for _ in range(20))
                if name == "presence"
            ]
            if [sender.name] in people:
                break
        else:
            pytest.fail(f"{most} messages later, the frozen member is still there")
    finally:
        frozen_socket.socket.close()
