"""Step 07: rooms and logins: who may hear what, and nothing lost across a reconnect or a restart.

People sign up and sign in (Flask-Login, Flask-WTF in forms.py, Werkzeug's password hashes),
chat in public rooms and in private rooms with members, and every message is stored in SQLite
(db.py, schema.sql) before it is broadcast. A socket must come from a signed-in browser, and each
`join` and `send message` is checked in its handler: the page is not what keeps a room private.
A page sends the id of the last message it has shown on every (re)connect, and each room it joins
first sends what it missed. Run it with `make step-07` or `python app.py`.
"""

import contextlib
import functools
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import db
from flask import Flask, abort, redirect, render_template, request, url_for
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from flask_socketio import (
    ConnectionRefusedError,  # not the built-in one: its message would not reach the client
    SocketIO,
    disconnect,
    emit,
    join_room,
    leave_room,
)
from flask_wtf.csrf import CSRFProtect
from forms import MemberForm, RoomForm, SignInForm, SignUpForm
from werkzeug.security import check_password_hash, generate_password_hash

MAX_MESSAGE_CHARS = 500
HISTORY = 100  # a join sends at most this many of a room's messages: the newest
SEND_BURST = int(os.environ.get("SEND_BURST", "10"))  # messages a user may send at once...
SEND_RATE = float(os.environ.get("SEND_RATE", "5"))  # ...then this many a second (0: no limit)
PRESENCE_DELAY = 0.2  # seconds: at most one presence broadcast per room this often
SIGN_IN_AGAIN = "You are not signed in: sign in again."
NO_SUCH_ROOM = "There is no room by that name that you may enter."

# The database and the key that signs session cookies live in an instance folder created on
# first run: this step's instance/, or INSTANCE_PATH. (Flask's default for a script run as
# `python app.py` would be instance/ in whatever directory it was started from.)
instance = os.environ.get("INSTANCE_PATH") or os.path.join(os.path.dirname(__file__), "instance")
app = Flask(__name__, instance_path=os.path.abspath(instance))
os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
app.config.update(
    DATABASE=os.path.join(app.instance_path, "chat.sqlite"),
    SESSION_COOKIE_SAMESITE="Lax",
    WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
)
# Every POST needs its form's csrf_token (Socket.IO's requests are answered before Flask's).
CSRFProtect(app)
login_manager = LoginManager(app)
login_manager.login_view = "login"
login_manager.login_message = "Sign in to chat."
# threading, as in step 04; same-origin only (cors_allowed_origins left at its default), 64 KiB.
# async_handlers=False: a socket's events are handled one after the other, in the order its page
# sent them (by default each runs in a thread of its own, and two quick messages could be stored
# the other way round).
socketio = SocketIO(
    app, async_mode="threading", async_handlers=False, max_http_buffer_size=64 * 1024
)


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
presence_task = None
# Held while what a room says or who hears it changes: storing and broadcasting a message,
# joining a room and sending what it missed, removing a member. So each socket receives a room's
# messages in id order, each once, and no one is added or removed between a check and its use.
room_lock = threading.Lock()


# --- accounts ---


class User(UserMixin):
    def __init__(self, user_id, name, login):
        self.id, self.name, self.login = user_id, name, login

    def get_id(self):
        return self.login  # what Flask-Login keeps in the session cookie


@login_manager.user_loader
def load_user(login):
    found = db.query(
        "SELECT users.id, users.name FROM logins JOIN users ON users.id = logins.user_id"
        " WHERE logins.token = ?",
        login,
    )
    return User(found[0]["id"], found[0]["name"], login) if found else None


@app.route("/signup", methods=["GET", "POST"])
def signup():
    form = SignUpForm()
    if form.validate_on_submit():
        try:
            user_id = db.change(
                "INSERT INTO users (name, password_hash) VALUES (?, ?)",
                form.username.data,
                generate_password_hash(form.password.data),
            )
        except sqlite3.IntegrityError:
            form.username.errors.append("That username is taken.")
        else:
            return sign_in(user_id, form.username.data)
    return account_page(form, "Sign up")


@app.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("index"))
    form = SignInForm()
    if form.validate_on_submit():
        found = db.query("SELECT * FROM users WHERE name = ?", form.username.data)
        if found and check_password_hash(found[0]["password_hash"], form.password.data):
            return sign_in(found[0]["id"], found[0]["name"])
        form.form_errors.append("Wrong username or password.")
    return account_page(form, "Sign in")


def sign_in(user_id, name):
    # A login of its own for this browser: signing out deletes it, and with it every copy of
    # the session cookie stops working (a signed cookie alone cannot be taken back).
    login = secrets.token_urlsafe(24)
    db.change("INSERT INTO logins (token, user_id) VALUES (?, ?)", login, user_id)
    login_user(User(user_id, name, login))
    return redirect(url_for("index"))


def account_page(form, action):
    # A POST that gets here was refused: the form comes back with the reasons, as a 400.
    status = 400 if request.method == "POST" else 200
    return render_template("account.html", form=form, action=action), status


@app.post("/logout")
@login_required
def logout():
    login = current_user.login
    db.change("DELETE FROM logins WHERE token = ?", login)
    logout_user()
    # Open sockets read the cookie once, at their handshake, and would not notice: close this
    # login's sockets, in every tab (each page then says "sign in again").
    with state_lock:
        sids = [sid for sid, visitor in online.items() if visitor.login == login]
    for sid in sids:
        disconnect(sid, namespace="/")
    return redirect(url_for("login"))


# --- rooms ---


@app.get("/")
@login_required
def index():
    return chat_page(RoomForm())


@app.post("/rooms")
@login_required
def create_room():
    form = RoomForm()
    if form.validate_on_submit():
        try:
            with db.connection() as database:
                database.execute(
                    "INSERT INTO rooms (name, owner_id) VALUES (?, ?)",
                    (form.name.data, current_user.id),
                )
                database.execute(
                    "INSERT INTO members (room, user_id) VALUES (?, ?)",
                    (form.name.data, current_user.id),
                )
        except sqlite3.IntegrityError:
            form.name.errors.append("That name is taken.")
        else:
            return redirect(url_for("index", room=form.name.data))
    return chat_page(form), 400


def chat_page(room_form):
    rooms = db.query(
        "SELECT name, owner_id FROM rooms WHERE owner_id IS NULL"
        " OR name IN (SELECT room FROM members WHERE user_id = ?)"
        " ORDER BY owner_id IS NOT NULL, name",
        current_user.id,
    )
    names = [room["name"] for room in rooms]
    shown = request.args.get("room") if request.args.get("room") in names else names[0]
    return render_template("index.html", rooms=rooms, shown=shown, room_form=room_form)


@app.route("/rooms/<room>/members", methods=["GET", "POST"])
@login_required
def members(room):
    owner_id = private_room(room)
    form = MemberForm()
    if request.method == "POST":
        if owner_id != current_user.id:
            abort(403)
        if form.validate_on_submit():
            error = add_member(room, form.username.data)
            if not error:
                return redirect(url_for("members", room=room))
            form.username.errors.append(error)
    people = db.query(
        "SELECT users.id, users.name FROM members JOIN users ON users.id = members.user_id"
        " WHERE members.room = ? ORDER BY users.name",
        room,
    )
    page = render_template("members.html", room=room, owner_id=owner_id, people=people, form=form)
    return page, 400 if form.errors else 200


def add_member(room, name):
    found = db.query("SELECT id FROM users WHERE name = ?", name)
    if not found:
        return f"There is no user called {name}."
    try:
        db.change("INSERT INTO members (room, user_id) VALUES (?, ?)", room, found[0]["id"])
    except sqlite3.IntegrityError:
        return f"{name} is already a member."
    return None


@app.post("/rooms/<room>/members/<int:user_id>/remove")
@login_required
def remove_member(room, user_id):
    if private_room(room) != current_user.id:
        abort(403)
    if user_id == current_user.id:
        abort(400, "The owner stays in the room.")
    with room_lock:
        db.change("DELETE FROM members WHERE room = ? AND user_id = ?", room, user_id)
        # Their sockets joined while they were a member: take them out now, not at their next
        # reconnect.
        with state_lock:
            sids = [sid for sid, visitor in online.items() if visitor.user_id == user_id]
            for sid in sids:
                online[sid].rooms.discard(room)
            changed_rooms.add(room)
        for sid in sids:
            leave_room(room, sid=sid, namespace="/")
    return redirect(url_for("members", room=room))


def private_room(room):
    """The owner of a private room the current user is a member of; 404 for any other room."""
    found = db.query(
        "SELECT owner_id FROM rooms JOIN members ON members.room = rooms.name"
        " WHERE rooms.name = ? AND members.user_id = ?",
        room,
        current_user.id,
    )
    if not found:
        abort(404)
    return found[0]["owner_id"]


def may_enter(user_id, room):
    return bool(
        db.query(
            "SELECT 1 FROM rooms WHERE name = ? AND (owner_id IS NULL"
            " OR name IN (SELECT room FROM members WHERE user_id = ?))",
            room,
            user_id,
        )
    )


# --- the socket ---


@socketio.on("connect")
def on_connect(auth):
    # The handshake is an HTTP request from the page, with the page's cookies: Flask-Login reads
    # the session cookie here exactly as in a route. No signed-in user, no socket.
    if not current_user.is_authenticated:
        raise ConnectionRefusedError(SIGN_IN_AGAIN)
    last_id = auth.get("last_id", 0) if isinstance(auth, dict) else 0
    if type(last_id) is not int or last_id < 0:  # type(): True is an int to isinstance
        raise ConnectionRefusedError("auth.last_id must be a whole number, 0 or more.")
    with state_lock:
        online[request.sid] = Visitor(
            current_user.id, current_user.name, current_user.login, last_id
        )
    start_presence()


@socketio.on("disconnect")
def on_disconnect(reason):
    with state_lock:
        visitor = online.pop(request.sid, None)
        if visitor:
            changed_rooms.update(visitor.rooms)


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
            join_room(room)
            # What this page missed first; live messages follow once the lock is released.
            for message in missed(room, visitor.last_id):
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
    """A token bucket: `burst` messages at once, then `rate` a second. A rate of 0: no limit."""

    def __init__(self, burst, rate):
        self.burst, self.rate = burst, rate
        self.tokens = burst
        self.checked = time.monotonic()

    def allow(self):
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.checked) * self.rate)
        self.checked = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def allow_send(user_id):
    # One bucket per user, whichever tab sends. Two tabs' events run in two threads at once,
    # so the bucket is read, refilled and taken from under the lock.
    with state_lock:
        if user_id not in send_limits:
            send_limits[user_id] = SendLimit(SEND_BURST, SEND_RATE)
        return send_limits[user_id].allow()


def start_presence():
    # Started by the first connection, as step 04's clock: the debug reloader's watcher process
    # never accepts one, so only the serving process runs it.
    global presence_task
    with state_lock:
        if presence_task is None:
            presence_task = socketio.start_background_task(send_presence)


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


def session_key():
    """SECRET_KEY, or a key made on first run and kept in the instance folder, so that people
    stay signed in across a restart."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = os.path.join(app.instance_path, "secret_key")
    if not os.path.exists(path):
        draft = f"{path}.{os.getpid()}"
        with open(draft, "w") as file:
            file.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another server starting at once was first
            os.link(draft, path)  # atomic: the file appears whole, or not at all
        os.remove(draft)
    with open(path) as file:
        return file.read()


app.secret_key = session_key()
db.init_app(app)


if __name__ == "__main__":
    # socketio.run refuses Werkzeug's development server when stdin is not a terminal (tests,
    # notebooks, CI); this flag says we know it is a development server.
    socketio.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
