"""The push side of the chat: the Socket.IO handlers and what this process knows about sockets.

Who is on each socket (`online`), the checks every `join` and `send message` makes (`may_enter`),
catch-up by id (`missed`), the per-user rate limit, and presence, coalesced per room. app.py gives
`socketio` its settings. accounts.py and rooms.py call the last two functions (close a login's
sockets, take a user's sockets out of a room); this module imports neither of them.
"""

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import db
from flask import request
from flask_login import current_user
from flask_socketio import (
    ConnectionRefusedError,  # not the built-in one: its message would not reach the client
    SocketIO,
    disconnect,
    emit,
    join_room,
    leave_room,
)

MAX_MESSAGE_CHARS = 500
HISTORY = 100  # a join sends at most this many of a room's messages: the newest
SEND_BURST = int(os.environ.get("SEND_BURST", "10"))  # messages a user may send at once...
SEND_RATE = float(os.environ.get("SEND_RATE", "5"))  # ...then this many a second (0: no limit)
PRESENCE_DELAY = 0.2  # seconds: at most one presence broadcast per room this often
# A connection is closed when it has not signed in (connected to Socket.IO) this many seconds
# after it opened: a refused `connect` leaves the Engine.IO connection, and its thread, open.
SIGN_IN_TIME = float(os.environ.get("SIGN_IN_TIME", "5"))
QUEUE = int(os.environ.get("QUEUE", "100"))  # packets a socket may fall behind before it is dropped
SOCKET_CHECK = 0.2  # seconds between two looks at every connection (look_after_connections)
LARGEST_ID = 2**63 - 1  # SQLite's largest integer: a last_id above it makes the query fail
SIGN_IN_AGAIN = "You are not signed in: sign in again."
NO_SUCH_ROOM = "There is no room by that name that you may enter."

logger = logging.getLogger(__name__)
socketio = SocketIO()  # its settings are in app.py, in socketio.init_app(app, ...)


@dataclass
class Visitor:
    """Who is on one socket, what its page had shown when it connected, and the rooms it is in."""

    user_id: int
    name: str
    login: str
    last_id: int
    rooms: set = field(default_factory=set)


online = {}  # socket id -> Visitor
send_limits = {}  # user id -> SendLimit, shared by all the user's tabs
changed_rooms = set()  # rooms whose people changed since the last presence broadcast
state_lock = threading.Lock()  # for the three above: each socket's handlers run in its thread
tasks = None  # the background tasks, started by the first connection
# Held while what a room says or who hears it changes: storing and broadcasting a message,
# joining a room and sending what it missed, removing a member. So each socket receives a room's
# messages in id order, each once, and no one is added or removed between a check and its use.
# One lock for all rooms, not one per room: the page's bookmark is one id for every room, so a
# message must not overtake an older one of another room (README, "How many pages").
room_lock = threading.Lock()


@socketio.on("connect")
def on_connect(auth):
    start_tasks()
    if sent_as_an_event():
        return False
    # The handshake is an HTTP request from the page, with the page's cookies: Flask-Login reads
    # the session cookie here exactly as in a route. No signed-in user, no socket.
    if not current_user.is_authenticated:
        raise ConnectionRefusedError(SIGN_IN_AGAIN)
    last_id = auth.get("last_id", 0) if isinstance(auth, dict) else 0
    # type(): True is an int to isinstance
    if type(last_id) is not int or not 0 <= last_id <= LARGEST_ID:
        raise ConnectionRefusedError("auth.last_id must be a whole number, 0 or more.")
    with state_lock:
        online[request.sid] = Visitor(
            current_user.id, current_user.name, current_user.login, last_id
        )


@socketio.on("disconnect")
def on_disconnect(reason):
    if sent_as_an_event():
        return
    with state_lock:
        visitor = online.pop(request.sid, None)
        if visitor:
            changed_rooms.update(visitor.rooms)


def sent_as_an_event():
    """Whether this `connect` or `disconnect` is a client's event of that name, 42["disconnect"]:
    python-socketio calls our handler for it as for the real thing, but the socket stays
    connected, in its rooms. While a socket really connects or disconnects, Socket.IO counts it
    as not connected."""
    return socketio.server.manager.is_connected(request.sid, "/")


def visitor_required(handler):
    """Call the handler with the socket's Visitor. An event that was on its way when its login
    signed out (and the socket was closed) is refused."""

    @functools.wraps(handler)
    def with_visitor(data=None):
        visitor = online.get(request.sid)
        if visitor is None:
            return {"error": SIGN_IN_AGAIN}
        return handler(visitor, data)

    return with_visitor


@socketio.on("join")
@visitor_required
def on_join(visitor, data):
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str):
        return {"error": "That was not a join (it needs a room name as text)."}
    with room_lock:
        if not may_enter(visitor.user_id, room):
            return {"error": NO_SUCH_ROOM}
        if room not in visitor.rooms:
            # What this page missed first; live messages follow once the lock is released.
            # Read before join_room: if the query failed, the socket would hear the room unseen.
            messages = missed(room, visitor.last_id)
            join_room(room)
            for message in messages:
                emit("new message", message)
            with state_lock:
                visitor.rooms.add(room)
                changed_rooms.add(room)
    return {"ok": True}


@socketio.on("send message")
@visitor_required
def on_send_message(visitor, data):
    if not allow_send(visitor.user_id):
        return {"error": "You are sending too fast: wait a moment, then send again."}
    room, text, error = read_message(data)
    if error:
        return {"error": error}
    with room_lock:
        if not may_enter(visitor.user_id, room):
            return {"error": NO_SUCH_ROOM}
        # Stored first: a page that misses the broadcast finds the message in the database.
        message = {"room": room, "name": visitor.name, "text": text}
        message["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        message["id"] = db.change(
            "INSERT INTO messages (room, user_id, time, text) VALUES (?, ?, ?, ?)",
            room,
            visitor.user_id,
            message["time"],
            text,
        )
        emit("new message", message, to=room)
    return {"ok": True}


def read_message(message):
    """Return (room, text, None) for a good message, or (None, None, what is wrong with it)."""
    if not (
        isinstance(message, dict)
        and isinstance(message.get("room"), str)
        and isinstance(message.get("text"), str)
    ):
        return None, None, "That was not a chat message (it needs a room and a text, as text)."
    text = message["text"].strip()
    if not text:
        return None, None, "Type a message before you send it."
    if len(text) > MAX_MESSAGE_CHARS:
        return (
            None,
            None,
            f"A message has at most {MAX_MESSAGE_CHARS} characters; yours has {len(text)}.",
        )
    return message["room"], text, None


def may_enter(user_id, room):
    """Whether the room exists and is public, or private with this user among its members."""
    return bool(
        db.query(
            "SELECT 1 FROM rooms WHERE name = ? AND (owner_id IS NULL"
            " OR name IN (SELECT room FROM members WHERE user_id = ?))",
            room,
            user_id,
        )
    )


def missed(room, last_id):
    """The room's messages after `last_id`, oldest first: at most the newest HISTORY."""
    newest_first = db.query(
        "SELECT messages.id, room, name, time, text FROM messages"
        " JOIN users ON users.id = messages.user_id"
        " WHERE room = ? AND messages.id > ? ORDER BY messages.id DESC LIMIT ?",
        room,
        last_id,
        HISTORY,
    )
    return [dict(row) for row in reversed(newest_first)]


class SendLimit:
    """A token bucket: `burst` messages at once, then `rate` a second; rate 0 means no limit."""

    def __init__(self, burst: int, rate: float):
        self.burst = self.tokens = burst
        self.rate = rate
        self.last = time.monotonic()
        self.lock = threading.Lock()  # so that two threads may call allow() at once

    def allow(self) -> bool:
        if not self.rate:
            return True
        with self.lock:
            now = time.monotonic()
            # The bucket refills with time, up to `burst`; each message takes one token.
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


def allow_send(user_id):
    # One bucket per user, whichever tab sends. Two tabs' events run in two threads at once, so
    # the bucket is looked up and made under the lock: two first messages must not make two.
    with state_lock:
        if user_id not in send_limits:
            send_limits[user_id] = SendLimit(SEND_BURST, SEND_RATE)
        limit = send_limits[user_id]
    return limit.allow()


def start_tasks():
    # Started by the first connection, as step 04's clock: the debug reloader's watcher process
    # never accepts one, so only the serving process runs them.
    global tasks
    with state_lock:
        if tasks is None:
            tasks = [
                socketio.start_background_task(send_presence),
                socketio.start_background_task(look_after_connections),
            ]


def look_after_connections():
    """Every SOCKET_CHECK seconds: close the connections that have not signed in within
    SIGN_IN_TIME, and drop the sockets more than QUEUE packets behind."""
    opened = {}  # Engine.IO id -> when this loop first saw it without a Socket.IO connection
    over = {}  # Engine.IO id -> packets queued at the last look, if more than QUEUE
    while True:
        socketio.sleep(SOCKET_CHECK)
        now = time.monotonic()
        connections = socketio.server.eio.sockets.copy()  # Engine.IO id -> its connection
        strangers = [
            eio_sid
            for eio_sid in connections
            if socketio.server.manager.sid_from_eio_sid(eio_sid, "/") is None
        ]
        opened = {eio_sid: opened.get(eio_sid, now) for eio_sid in strangers}
        for eio_sid, since in opened.items():
            if now - since > SIGN_IN_TIME:
                # wait=False: the close packet goes after what is queued (the refusal, say).
                connections[eio_sid].close(wait=False)
        over = drop_clients_behind(connections, over)


def drop_clients_behind(connections, over_before):
    """Drop every client more than QUEUE packets behind at two looks in a row, and no fewer at the
    second: it stopped reading, or cannot keep up. (A join queues up to HISTORY missed messages at
    once: a page that reads takes some of them before the next look.) Returns, for the next look,
    the clients it kept that are more than QUEUE behind.

    Engine.IO queues what we emit to a client without limit, and offers no setting for one; its
    heartbeat ends a client that stops answering pings, but only after 25 + 20 s, and never one
    that answers them without reading. So we look at its queues (an internal, pinned in
    pyproject.toml; the tests of steps 04 and 07 fail if it changes).
    """
    over = {}
    for eio_sid, client in connections.items():
        behind = client.queue.qsize()
        if behind <= QUEUE:
            continue
        if eio_sid not in over_before or behind < over_before[eio_sid]:
            over[eio_sid] = behind  # over the bound at this look only, or catching up
        else:
            logger.warning("Dropped client %s: %d packets behind", client.sid, behind)
            # abort: no close packet (it would wait behind the rest); runs our disconnect handler.
            client.close(wait=False, abort=True)
            # Free what it will never read. Its writer thread may be stuck sending to it until
            # its connection closes; the None ends that thread as soon as it gets there.
            with contextlib.suppress(queue.Empty):
                while True:
                    client.queue.get_nowait()
            client.queue.put(None)
    return over


def send_presence():
    """Tell each room whose people changed who is in it now: however many joined or left in
    the last PRESENCE_DELAY seconds, one broadcast per room, with the latest names."""
    while True:
        socketio.sleep(PRESENCE_DELAY)
        with state_lock:
            presence = {
                room: sorted(
                    {visitor.name for visitor in online.values() if room in visitor.rooms},
                    key=str.lower,
                )
                for room in changed_rooms
            }
            changed_rooms.clear()
        # Not under the lock: an emit can run a timed-out client's disconnect handler in this
        # thread, and that handler takes the lock.
        for room, names in presence.items():
            socketio.emit("presence", {"room": room, "names": names}, to=room)


# --- for accounts.py and rooms.py ---


def sockets_of(user_id, login=None):
    """The user's sockets (only those of one login, if given)."""
    with state_lock:
        logins = {sid: v.login for sid, v in online.items() if v.user_id == user_id}
    return [sid for sid, their_login in logins.items() if login in (None, their_login)]


def close_sockets(user_id, login):
    """Close the sockets of one login, in every tab: their pages then say "sign in again"."""
    for sid in sockets_of(user_id, login):
        disconnect(sid, namespace="/")


def take_out_of_room(user_id, room):
    """Take the user's sockets out of `room` now, not at their next reconnect. Call it holding
    room_lock, with the database change, so no message slips in between."""
    for sid in sockets_of(user_id):
        with state_lock:
            if sid in online:
                online[sid].rooms.discard(room)
            changed_rooms.add(room)
        leave_room(room, sid=sid, namespace="/")
