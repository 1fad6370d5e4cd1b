"""The push side of the chat: the Socket.IO handlers and what this process knows about sockets.

Who is on each socket (`online`), the handlers of the contract (README), and presence, coalesced
per room. What the handlers check and store is in messages.py (who may enter a room, catch-up by
id), the rate limit in rate_limit.py, and the policing of Engine.IO's connections in
connections.py. app.py gives `socketio` its settings and starts the background tasks
(`start_tasks`). accounts.py and rooms.py call the last two functions (close a login's sockets,
take a user's sockets out of a room); this module imports neither of them.

Step 08's, for two app servers: what every server must know about the others' sockets (who is
in each room, which sockets each user has) is kept in Redis by registry.py.
"""

import functools
import queue
import threading
from dataclasses import dataclass, field

import connections
import registry
from flask import current_app, request
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from flask_socketio import (
    ConnectionRefusedError,  # not the built-in one: its message would not reach the client
    SocketIO,
    disconnect,
    emit,
    join_room,
    leave_room,
)
from messages import missed, read_message, rooms_open_to, store
from rate_limit import allow_send  # per server: tabs on the other draw from its bucket (README)

PRESENCE_DELAY = 0.2  # seconds: at most one presence broadcast per room this often
LARGEST_ID = 2**63 - 1  # SQLite's largest integer: a last_id above it makes the query fail
SIGN_IN_AGAIN = "You are not signed in: sign in again."
NO_SUCH_ROOM = "There is no room by that name that you may enter."
BUSY = "The server is busy: try again in a moment."

socketio = SocketIO()  # its settings are in app.py, in socketio.init_app(app, ...)


@dataclass
class Visitor:
    """Who is on one socket, what its page had shown when it connected, and the rooms it is in."""

    user_id: int
    name: str
    login: str
    last_id: int
    rooms: set = field(default_factory=set)


online = {}  # socket id -> Visitor, for this server's sockets
joined_since = {}  # room -> the sockets of this server that joined it since the last broadcast
state_lock = threading.Lock()  # for the two above: each socket's handlers run in a greenlet
# Held while what a room says or who hears it changes: storing and broadcasting a message,
# joining a room and sending what it missed, removing a member. So each socket receives a room's
# messages in id order, each once, and no one is added or removed between a check and its use.
# One lock for all rooms, not one per room: the page's bookmark is one id for every room, so a
# message must not overtake an older one of another room (the course's bench/capacity.md says
# what one lock costs).
room_lock = threading.Lock()
line = None  # the messages this server took, waiting to be stored: (visitor, room, text)


class SessionOncePerSocket(SecureCookieSessionInterface):
    """Flask's session, read from the cookie once per socket, not at every event.

    Flask-SocketIO runs each event in a request context of its own, and Flask then opens the
    session again: it checks the cookie's signature and decodes it (about 60 µs an event,
    measured: README), only for Flask-SocketIO to put in its place the copy it keeps in the
    socket's environ since its first event ("saved_session"). This gives that copy at once."""

    def open_session(self, app, request):
        return request.environ.get("saved_session") or super().open_session(app, request)


@socketio.on("connect")
def on_connect(auth):
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
    registry.remember_socket(current_user.id, request.sid, current_user.login)
    # Which server this socket landed on: the page shows it.
    emit("server", {"name": current_app.config["SERVER"]})


@socketio.on("disconnect")
def on_disconnect(reason):
    if sent_as_an_event():
        return
    with state_lock:
        visitor = online.pop(request.sid, None)
    if visitor:
        registry.forget_socket(visitor.user_id, request.sid)


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
        if not rooms_open_to(visitor.user_id, room):
            return {"error": NO_SUCH_ROOM}
        if room not in visitor.rooms:
            # Joined before the history is read: the lock does not hold the other server, and a
            # message it stores meanwhile then comes live, from the history or both (the page
            # shows it once), never neither. (Step 08 reads first: its lock holds every sender.)
            join_room(room)
            try:
                messages = missed(room, visitor.last_id)
            except Exception:
                leave_room(room)  # the socket must not hear a room that presence does not show
                raise
            # What this page missed first; live messages follow once the lock is released.
            for message in messages:
                emit("new message", message)
            with state_lock:
                visitor.rooms.add(room)
                joined_since.setdefault(room, set()).add(request.sid)
    return {"ok": True}


@socketio.on("send message")
@visitor_required
def on_send_message(visitor, data):
    if not allow_send(visitor.user_id):
        return {"error": "You are sending too fast: wait a moment, then send again."}
    room, text, error = read_message(data)
    if error:
        return {"error": error}
    if not rooms_open_to(visitor.user_id, room):
        return {"error": NO_SUCH_ROOM}
    # In line to be stored and sent (store_in_turn), or refused at once when the line is full:
    # waiting longer would only make every page of every room fall further behind.
    try:
        line.put_nowait((visitor, room, text))
    except queue.Full:
        return {"error": BUSY}
    return {"ok": True}


def start_tasks(app):
    """Start the background tasks for `app`: presence, and the policing of connections (with
    the app's settings). Started with the app, not by the first connection: a server no page has
    signed in to yet must close the connections that never sign in too. And the task that
    stores and sends the messages in line, LINE of them at most."""
    global line
    line = queue.Queue(maxsize=app.config["LINE"])
    socketio.start_background_task(store_in_turn, app)
    socketio.start_background_task(send_presence, app)
    socketio.start_background_task(connections.look_after_connections, app)


def store_in_turn(app):
    """Store each message in line, then send it to its room, in the order the server took them:
    one task, so one socket's messages keep their order. A socket's handler only puts its
    message in line (on_send_message): it is free to read the next at once, so a busy server
    sees how much waits, and refuses the rest, instead of leaving it unread in the sockets."""
    with app.app_context():
        while True:
            visitor, room, text = line.get()
            try:
                with room_lock:
                    # Asked again: the sender may have left the room while the message waited.
                    if rooms_open_to(visitor.user_id, room):
                        # Stored first: a page that misses it live finds it in the database.
                        message = store(room, visitor.user_id, visitor.name, text)
                        socketio.emit("new message", message, to=room)
            except Exception:  # the database did not answer: this message is lost, not the task
                app.logger.exception("a message could not be stored")


def send_presence(app):
    """Every PRESENCE_DELAY seconds, tell this server's pages who is in their rooms on every
    server: the whole room when that changed, and a page that just joined in any case. Each
    server tells its own pages, reading the others' people from Redis, so nothing about presence
    goes through the queue."""
    told = {}  # room -> the names this server's pages were last told
    while True:
        socketio.sleep(PRESENCE_DELAY)
        with state_lock:
            here = {}  # room -> the names of this server's people in it
            for room in set().union(*(visitor.rooms for visitor in online.values())):
                # Socket.IO's own record: it also knows when another server took a socket out.
                # (Room by room: socketio.server.rooms(sid) looks through every room, and each
                # socket has one of its own, so asking it for every socket takes N² steps.)
                for sid, _ in socketio.server.manager.get_participants("/", room):
                    if sid in online:
                        here.setdefault(room, set()).add(online[sid].name)
            joined = joined_since.copy()
            joined_since.clear()
        with app.app_context():  # registry.py asks this app's Redis
            everywhere = registry.people_everywhere(here, left=told.keys() - here.keys())
        # Not under the lock: an emit can run a timed-out client's disconnect handler in this
        # greenlet, and that handler takes the lock.
        for room, names in everywhere.items():
            presence = {"room": room, "names": names}
            if names != told.get(room):  # the whole room: a copy for each of its pages
                socketio.emit("presence", presence, to=room, ignore_queue=True)
            else:  # only the pages that just joined: 10,000 pages join in a storm of seconds
                for sid in joined.get(room, ()):
                    socketio.emit("presence", presence, to=sid, ignore_queue=True)
        told = everywhere


# --- for accounts.py and rooms.py ---


def sockets_of(user_id, login=None):
    """The user's sockets (only those of one login, if given), on this server and, as far as
    Redis knows, on the others."""
    with state_lock:
        logins = {sid: v.login for sid, v in online.items() if v.user_id == user_id}
    logins.update(registry.known_sockets(user_id))
    return [sid for sid, their_login in logins.items() if login in (None, their_login)]


def close_sockets(user_id, login):
    """Close the sockets of one login, in every tab: their pages then say "sign in again"."""
    for sid in sockets_of(user_id, login):
        disconnect(sid, namespace="/")  # another server's socket: asked through Redis


def take_out_of_room(user_id, room, change):
    """Call `change()`, the database change that takes the user out of `room`, and take their
    sockets out of it now, not at their next reconnect: both under room_lock, so that no message
    slips in between."""
    with room_lock:
        change()
        for sid in sockets_of(user_id):
            with state_lock:
                if sid in online:
                    online[sid].rooms.discard(room)
            leave_room(room, sid=sid, namespace="/")  # on another server: asked through Redis
