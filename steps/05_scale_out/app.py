"""Step 05: step 04's chat, scaled out to several server processes that share Redis.

Every server is started with the same `message_queue`: an emit on one server is published to
Redis and delivered by every server to its own clients, so Alice on one server and Bob on
another share one chat. Presence lives in Redis too, one key per server that expires unless
the server's heartbeat renews it. Each server limits its own senders and drops its own clients
that fall too far behind. Run it with `make step-05` (two servers) or `python app.py`.
"""

import contextlib
import os
import queue
import threading
import time
from datetime import datetime

import redis
from flask import Flask, render_template, request
from flask_socketio import SocketIO, emit

MAX_MESSAGE_CHARS = 500
MAX_NAME_CHARS = 40
CLOCK_INTERVAL = float(os.environ.get("CLOCK_INTERVAL", "5"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# A server renews its presence key every PRESENCE_INTERVAL seconds; the key lives three
# intervals, so the clients of a server that died leave the count after 3 to 4 intervals.
PRESENCE_INTERVAL = float(os.environ.get("PRESENCE_INTERVAL", "1"))
SERVER = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
PRESENCE_KEY = f"online:{SERVER}"
# SEND_BURST: how many messages a page may send in a row; SEND_RATE: how many a second after
# that (0 turns the limit off). A person typing never meets the defaults.
SEND_BURST = int(os.environ.get("SEND_BURST", "10"))
SEND_RATE = float(os.environ.get("SEND_RATE", "5"))
TOO_FAST = (
    f"Slow down: at most {SEND_BURST} messages in a row, then {SEND_RATE:g} a second. "
    "That one was not sent."
)
# QUEUE: how many packets a client may fall behind before it is dropped.
QUEUE = int(os.environ.get("QUEUE", "100"))
# How often the room is looked after: the clients too far behind are dropped, and the people
# online count goes out if it changed (at most once per look, however many joined meanwhile).
ROOM_CHECK = 0.2

app = Flask(__name__)
# threading: one thread per connection on simple-websocket, no eventlet or gevent to install.
# Engine.IO accepts packets of up to 1 MB unless told otherwise; a bigger one closes that client.
# Same-origin is enforced because cors_allowed_origins is left at its default (never "*").
# message_queue: every emit goes to this server's clients and, through Redis, to the others'.
# WebSocket only: a client's whole session is one connection to one server, so a load balancer
# in front of the servers needs no sticky sessions (long-polling is many requests; see README).
socketio = SocketIO(
    app,
    async_mode="threading",
    max_http_buffer_size=64 * 1024,
    message_queue=REDIS_URL,
    transports=["websocket"],
)
# Our own connection for the presence keys. Short timeouts and no retries: when Redis is away,
# a connect or a message must not wait for it.
store = redis.Redis.from_url(
    REDIS_URL, socket_timeout=1, socket_connect_timeout=1, retry=None, decode_responses=True
)

online = 0  # this server's clients; the total across servers is the sum of the keys in Redis
online_changed = False
online_lock = threading.Lock()  # handlers run in threads of their own
send_limits = {}  # one SendLimit per connection, by sid: its events may run in two threads at once
redis_problem = None  # why Redis last failed, or None while it answers
tasks = None  # the background tasks, started by the first client that connects
tasks_lock = threading.Lock()


@app.get("/")
def index():
    return render_template("index.html", clock=clock_time(), server=SERVER)


@socketio.on("connect")
def on_connect():
    start_background_tasks()
    if sent_as_an_event():
        return False
    send_limits[request.sid] = SendLimit(SEND_BURST, SEND_RATE)
    count_online(+1)


@socketio.on("disconnect")
def on_disconnect(reason):
    if sent_as_an_event():
        return
    send_limits.pop(request.sid, None)
    count_online(-1)


def sent_as_an_event():
    """Whether this `connect` or `disconnect` is a client's event of that name, 42["connect"]:
    python-socketio calls our handler for it as for the real thing, but the socket stays
    connected (a new bucket would lift its rate limit). While a socket really connects or
    disconnects, Socket.IO counts it as not connected."""
    return socketio.server.manager.is_connected(request.sid, "/")


@socketio.on("send message")
def on_send_message(message):
    # What we return is the acknowledgement: it goes back to the sender alone, to its own emit.
    # Every event counts. (A client that left while its events waited for a thread has no limit
    # any more; nobody reads the answer then.)
    limit = send_limits.get(request.sid)
    if limit is None or not limit.allow():
        return {"error": TOO_FAST}
    name, text, error = read_message(message)
    if error:
        return {"error": error}
    now = datetime.now().strftime("%H:%M")
    # broadcast=True: to every client of every server, the sender included.
    emit("new message", {"name": name, "time": now, "text": text}, broadcast=True)
    return {"ok": True}


def read_message(message):
    """Return (name, text, None) for a good message, or (None, None, what is wrong with it)."""
    if not (
        isinstance(message, dict)
        and isinstance(message.get("data"), str)
        and isinstance(message.get("username"), str)
    ):
        return None, None, "That was not a chat message (it needs data and username as text)."
    text = message["data"].strip()
    name = message["username"].strip()
    if not text:
        return None, None, "Type a message before you send it."
    if len(text) > MAX_MESSAGE_CHARS:
        return (
            None,
            None,
            f"A message has at most {MAX_MESSAGE_CHARS} characters; yours has {len(text)}.",
        )
    if len(name) > MAX_NAME_CHARS:
        return None, None, f"A name has at most {MAX_NAME_CHARS} characters."
    return name or "anonymous", text, None


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


def count_online(change):
    global online, online_changed
    with online_lock:
        online += change
        online_changed = True


def look_after_the_room():
    """Every ROOM_CHECK seconds: drop the clients too far behind, then send the count.

    The count goes to every server's pages if it changed since the last look: one presence
    event per join would cost N² packets for N joins, 125,000 for 500 pages reconnecting after a
    restart. Coalesced, they cost a few broadcasts.
    """
    global online_changed
    while True:
        drop_clients_behind()
        with online_lock:
            changed, online_changed = online_changed, False
        if changed:
            push_presence(everywhere=True)
        socketio.sleep(ROOM_CHECK)


def drop_clients_behind():
    """Drop every client more than QUEUE packets behind: it stopped reading, or cannot keep up.

    Engine.IO queues what we emit to a client without limit, and offers no setting for one; its
    heartbeat ends a client that stops answering pings, but only after 25 + 20 s, and never one
    that answers them without reading. So we look at its queues (an internal, pinned in
    pyproject.toml; tests/test_05_scale_out.py fails if it changes). Each server looks after its
    own clients, whichever server the messages came from.
    """
    for client in socketio.server.eio.sockets.copy().values():
        behind = client.queue.qsize()
        if behind > QUEUE:
            app.logger.warning("Dropped client %s: %d packets behind", client.sid, behind)
            # abort: no close packet (it would wait behind the rest); runs our disconnect handler.
            client.close(wait=False, abort=True)
            # Free what it will never read. Its writer thread may be stuck sending to it until
            # its connection closes; the None ends that thread as soon as it gets there.
            with contextlib.suppress(queue.Empty):
                while True:
                    client.queue.get_nowait()
            client.queue.put(None)


def heartbeat():
    # Renews this server's key before it expires, and sends the total to this server's pages:
    # that is how they learn that another server died (its key expired) without saying so. It
    # also corrects, one beat later, a count that raced with another server's.
    while True:
        push_presence(everywhere=False)
        socketio.sleep(PRESENCE_INTERVAL)


def push_presence(everywhere):
    # The emit is outside the lock: it can find a client whose pings timed out, and that client's
    # disconnect handler then runs in this very thread and would wait for the lock forever.
    count, shared = total_online()
    socketio.emit("presence", {"count": count}, ignore_queue=not (everywhere and shared))


def total_online():
    """Store this server's count in Redis and add up every server's: (total, True).

    Without Redis, this server's pages can reach only each other: (this server's count, False).
    """
    with online_lock:  # the last count stored is the latest
        try:
            store.set(PRESENCE_KEY, online, px=int(PRESENCE_INTERVAL * 3 * 1000))
            keys = list(store.scan_iter("online:*"))
            total = sum(int(count) for count in store.mget(keys) if count)
        except redis.RedisError as error:
            log_redis_problem(error)
            return online, False
        log_redis_problem(None)
        return total, True


def log_redis_problem(error):
    """Log when Redis goes away and when it comes back: once each, not at every beat."""
    global redis_problem
    if error and not redis_problem:
        app.logger.error(
            "Redis at %s does not answer (%s). Until it does, messages from this server's pages "
            "reach only this server's pages, and the online count is this server's own.",
            REDIS_URL,
            error,
        )
    elif redis_problem and not error:
        # Flask-SocketIO's own subscription retries after 1, 2, 4 ... 60 s: until its next try,
        # this server does not yet hear the others.
        app.logger.warning(
            "Redis at %s answers again. Messages flow between the servers again as soon as "
            "each one has subscribed again (see its 'retrying in N secs' lines).",
            REDIS_URL,
        )
    redis_problem = error


def start_background_tasks():
    # Started on the first connection, not at import: the debug reloader's watcher process
    # imports this file too but never accepts a connection, so only the serving process ticks.
    global tasks
    with tasks_lock:
        if tasks is None:
            tasks = [
                socketio.start_background_task(push_time),
                socketio.start_background_task(look_after_the_room),
                socketio.start_background_task(heartbeat),
            ]


def push_time():
    while True:
        # Each server has its own clock: its time goes to its own pages, not through Redis.
        socketio.emit("tick", clock_time(), ignore_queue=True)
        socketio.sleep(CLOCK_INTERVAL)


def clock_time():
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    # socketio.run refuses Werkzeug's development server when stdin is not a terminal (tests,
    # notebooks, CI); this flag says we know it is a development server.
    socketio.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
