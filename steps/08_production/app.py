"""Step 08: step 07's chat and step 06's jobs, run as in production, behind nginx.

The Procfile starts two app servers (gunicorn with a gevent worker each, gunicorn.conf.py) that
share Redis and the SQLite database, and nginx in front of them (nginx.conf); `make step-08`
runs it with honcho. There is no `python app.py`. What the app itself changes for that:
- Socket.IO runs on gevent, WebSocket only, and shares every emit through Redis (step 05).
- ProxyFix: behind nginx, URLs, the Origin and CSRF checks see the public https://host:port.
- Cookies are Secure; every page sends a Content-Security-Policy (scripts from this origin only).
- What step 07 kept in one process and every server must know lives in Redis: who is in each
  room, and which sockets each user has, so that signing out closes them on every server.
- Step 06's jobs (jobs.py) keep their events in Redis, so any server can stream any job.
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
import jobs
import redis
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
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import check_password_hash, generate_password_hash

MAX_MESSAGE_CHARS = 500
HISTORY = 100  # a join sends at most this many of a room's messages: the newest
SEND_BURST = int(os.environ.get("SEND_BURST", "10"))  # messages a user may send at once...
SEND_RATE = float(os.environ.get("SEND_RATE", "5"))  # ...then this many a second (0: no limit)
PRESENCE_DELAY = 0.2  # seconds: at most one presence broadcast per room this often
PRESENCE_TTL = 3  # seconds: the people of a server that died leave the rooms' lists this soon
SERVER = os.environ.get("SERVER", "app")  # this app server's name (the Procfile sets it)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Engine.IO pings every PING_INTERVAL seconds: traffic that keeps nginx from closing a quiet
# socket after proxy_read_timeout (nginx.conf), so that must stay above it.
PING_INTERVAL = float(os.environ.get("PING_INTERVAL", "25"))
# What a page may load: everything from this origin and nothing from anywhere else; no inline
# script (no <script> without src, no onclick, no hx-on), no plugins, no framing by other sites.
CSP = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
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
    SESSION_COOKIE_SECURE=True,  # sent over HTTPS only (HttpOnly is Flask's default)
    SESSION_COOKIE_SAMESITE="Lax",
    WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
)
# Every POST needs its form's csrf_token (Socket.IO's requests are answered before Flask's).
CSRFProtect(app)
login_manager = LoginManager(app)
login_manager.login_view = "login"
login_manager.login_message = "Sign in to chat."
# gevent, the worker gunicorn runs (a greenlet per connection); same-origin only, 64 KiB, as in
# step 07. message_queue: every emit reaches the pages of both servers (step 05). WebSocket only:
# a page's whole connection is one request to one server, so nginx needs no sticky sessions.
# async_handlers=False: a socket's events are handled one after the other, in the order its page
# sent them.
socketio = SocketIO(
    app,
    async_mode="gevent",
    async_handlers=False,
    max_http_buffer_size=64 * 1024,
    message_queue=REDIS_URL,
    transports=["websocket"],
    ping_interval=PING_INTERVAL,
)
# Listen to Redis from the start: python-socketio subscribes at the first connection, and a page
# that lands on a server just (re)started must not miss what the other server publishes.
socketio.server.manager.initialize()
socketio.server.manager_initialized = True
# nginx says in X-Forwarded-For, -Proto and -Host who asked for what (one proxy: trust one
# value of each). Outermost, so that Socket.IO's Origin check sees them too.
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
# Our own connection, for what every server must know. Short timeouts, no retries: when Redis
# is away, a connect or a sign-out must not wait for it.
store = redis.Redis.from_url(
    REDIS_URL, socket_timeout=1, socket_connect_timeout=1, retry=None, decode_responses=True
)


@dataclass
class Visitor:
    """Who is on one socket, what its page had shown when it connected, and the rooms it is in."""

    user_id: int
    name: str
    login: str
    last_id: int
    rooms: set = field(default_factory=set)


online = {}  # socket id -> Visitor, for this server's sockets
send_limits = {}  # user id -> SendLimit, shared by all the user's tabs on this server
changed_rooms = set()  # rooms where a socket of this server joined since the last broadcast
state_lock = threading.Lock()  # for the three above: each socket's handlers run in a greenlet
presence_task = None
# Held while what a room says or who hears it changes: storing and broadcasting a message,
# joining a room and sending what it missed, removing a member. So each socket receives a room's
# messages in id order, each once, and no one is added or removed between a check and its use.
room_lock = threading.Lock()


@app.after_request
def add_security_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    return response


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
    # Open sockets read the cookie once, at their handshake, and would not notice: close this
    # login's sockets, in every tab, on every server (each page then says "sign in again").
    for sid in sockets_of(current_user.id, login):
        disconnect(sid, namespace="/")  # another server's socket: asked through Redis
    logout_user()
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
        # reconnect. A socket on another server is taken out by that server, asked through Redis.
        for sid in sockets_of(user_id):
            with state_lock:
                if sid in online:
                    online[sid].rooms.discard(room)
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
    remember_socket(current_user.id, request.sid, current_user.login)
    start_presence()
    emit("server", {"name": SERVER})  # which server this socket landed on: the page shows it


@socketio.on("disconnect")
def on_disconnect(reason):
    with state_lock:
        visitor = online.pop(request.sid, None)
    if visitor:
        forget_socket(visitor.user_id, request.sid)


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
    # One bucket per user and server, whichever tab sends. (Tabs on the other server draw from
    # its bucket: see the README.)
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
    """Every PRESENCE_DELAY seconds, tell this server's pages who is in their rooms on every
    server: when that changed, or when one of them just joined. Each server tells its own pages,
    reading the others' people from Redis, so nothing about presence goes through the queue."""
    told = {}  # room -> the names this server's pages were last told
    while True:
        socketio.sleep(PRESENCE_DELAY)
        with state_lock:
            here = {}  # room -> the names of this server's people in it
            for sid, visitor in online.items():
                # Socket.IO's own record: it also knows when another server took a socket out.
                for room in socketio.server.rooms(sid, namespace="/"):
                    if room != sid:  # every socket is also in a room named after itself
                        here.setdefault(room, set()).add(visitor.name)
            joined = changed_rooms.copy()
            changed_rooms.clear()
        everywhere = people_everywhere(here, left=told.keys() - here.keys())
        # Not under the lock: an emit can run a timed-out client's disconnect handler in this
        # greenlet, and that handler takes the lock.
        for room, names in everywhere.items():
            if room in joined or names != told.get(room):
                socketio.emit(
                    "presence", {"room": room, "names": names}, to=room, ignore_queue=True
                )
        told = everywhere


def people_everywhere(here, left):
    """Store this server's people per room in Redis, under keys that expire unless renewed, and
    return the sorted names in each room on every server. Without Redis: this server's own."""
    try:
        with store.pipeline() as pipe:
            for room in left:
                pipe.delete(f"presence:{room}:{SERVER}")
            for room, names in here.items():
                key = f"presence:{room}:{SERVER}"
                pipe.delete(key).sadd(key, *names).expire(key, PRESENCE_TTL)
            pipe.execute()
            here = {
                room: store.sunion(list(store.scan_iter(f"presence:{room}:*"))) for room in here
            }
    except redis.RedisError:
        pass
    return {room: sorted(names, key=str.lower) for room, names in here.items()}


def remember_socket(user_id, sid, login):
    """Note in Redis whose socket this is, for whichever server must close it. A server that dies
    leaves its entries behind: closing a socket that is gone does nothing."""
    with contextlib.suppress(redis.RedisError):
        store.hset(f"sockets:{user_id}", sid, login)


def forget_socket(user_id, sid):
    with contextlib.suppress(redis.RedisError):
        store.hdel(f"sockets:{user_id}", sid)


def sockets_of(user_id, login=None):
    """The user's sockets on this server and, as far as Redis knows, on the others (those of
    one login, if given)."""
    with state_lock:
        logins = {sid: v.login for sid, v in online.items() if v.user_id == user_id}
    with contextlib.suppress(redis.RedisError):
        logins.update(store.hgetall(f"sockets:{user_id}"))
    return [sid for sid, their_login in logins.items() if login in (None, their_login)]


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
app.register_blueprint(jobs.blueprint)
# No `if __name__ == "__main__"`: gunicorn serves this app (see the Procfile).
