"""Step 09: step 08's chat and step 06's jobs, run as in production, behind nginx.

The Procfile starts two app servers (gunicorn with a gevent worker each, gunicorn.conf.py) that
share Redis and the SQLite database, and nginx in front of them (nginx.conf); `make step-09`
runs it with honcho. There is no `python app.py`. What the app itself changes for that:
- Socket.IO runs on gevent, WebSocket only, and shares every emit through Redis (step 05).
- ProxyFix: behind nginx, URLs, the Origin and CSRF checks see the public https://host:port.
- Cookies are Secure; every page sends a Content-Security-Policy (scripts from this origin only).
- What step 08 kept in one process and every server must know lives in Redis (registry.py): who
  is in each room, and which sockets each user has, so that signing out closes them everywhere.
- Step 06's jobs (jobs.py) keep their events in Redis, so any server can stream any job.

The app is made by `create_app()`, as in Flask's tutorial (gunicorn calls it: see the Procfile):
importing a module of this step does nothing else. The files, in reading order:
- app.py: the configuration, the extensions and the blueprints, wired together (this file);
- accounts.py: sign up, sign in, sign out (Flask-Login), with the forms of forms.py (Flask-WTF);
- rooms.py: the chat page, creating rooms, and their members;
- chat.py: the Socket.IO handlers, who is online, presence;
- messages.py: what the handlers check and store: who may enter a room, messages, catch-up by id;
- rate_limit.py: the rate limit on messages, per user;
- connections.py: Engine.IO's connections, policed: those that never sign in or fall behind;
- registry.py: what every app server must know about the others' sockets, in Redis;
- jobs.py: step 06's jobs, with their events in Redis Streams;
- db.py and schema.sql: the SQLite database, as Flask's tutorial uses it;
- gunicorn.conf.py, nginx.conf (filled in by nginx_conf.py) and the Procfile: the servers.
"""

import contextlib
import os
import secrets

import accounts
import db
import jobs
import registry
import rooms
from chat import SessionOncePerSocket, socketio, start_tasks
from flask import Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

HERE = os.path.dirname(__file__)
# What a page may load: everything from this origin and nothing from anywhere else; no inline
# script (no <script> without src, no onclick, no hx-on), no plugins, no framing by other sites.
# Forms post to this origin only (form-action is not covered by default-src).
CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none';"
    " form-action 'self'"
)


def from_the_environment():
    """The settings the environment may change (the Procfile's and the tests'), with their
    defaults."""
    settings = {
        # The database and the key that signs session cookies live in an instance folder created
        # on first run: this step's instance/, or INSTANCE_PATH. (Flask's default for a script run
        # as `python app.py` would be instance/ in whatever directory it was started from.)
        "INSTANCE_PATH": os.environ.get("INSTANCE_PATH") or os.path.join(HERE, "instance"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "SERVER": os.environ.get("SERVER", "app"),  # this app server's name (the Procfile sets it)
        # Engine.IO pings every PING_INTERVAL seconds: traffic that keeps nginx from closing a
        # quiet socket after proxy_read_timeout (nginx.conf), so that must stay above it.
        "PING_INTERVAL": float(os.environ.get("PING_INTERVAL", "25")),
        # Messages a user may send at once, then this many a second; 0: no limit (rate_limit.py).
        "SEND_BURST": int(os.environ.get("SEND_BURST", "10")),
        "SEND_RATE": float(os.environ.get("SEND_RATE", "5")),
        # Messages that may wait in line to be stored on this server; one more is refused at once
        # ("the server is busy"): a longer line only makes every page fall further behind.
        "LINE": int(os.environ.get("LINE", "50")),
        # A connection is closed when it has not signed in (connected to Socket.IO) this many
        # seconds after it opened (connections.py).
        "SIGN_IN_TIME": float(os.environ.get("SIGN_IN_TIME", "5")),
        # Packets a socket may fall behind before it is dropped.
        "QUEUE": int(os.environ.get("QUEUE", "100")),
        # How passwords are hashed: Werkzeug's default, scrypt at about 170 ms of CPU a hash. The
        # tests sign up hundreds of users, and set a cheaper scrypt (as Django's docs advise for
        # test suites).
        "PASSWORD_HASH": os.environ.get("PASSWORD_HASH", "scrypt"),
        # Refused attempts allowed per address (and per username, for sign-ins) before the answer
        # is 429 until the window has passed: a guesser gets 10 tries a minute, not 10 a second.
        "ACCOUNT_ATTEMPTS": os.environ.get("ACCOUNT_ATTEMPTS", "10 per minute"),
        # Members a private room may have (rooms.py).
        "MAX_MEMBERS": int(os.environ.get("MAX_MEMBERS", "50")),
        # The simulated work: JOB_STEPS steps of JOB_STEP_SECONDS each (the tests make them short).
        "JOB_STEPS": int(os.environ.get("JOB_STEPS", "20")),
        "JOB_STEP_SECONDS": float(os.environ.get("JOB_STEP_SECONDS", "0.5")),
        # Seconds of silence after which a stream sends a comment line, so a client that left is
        # noticed (the write fails) and proxies see traffic.
        "HEARTBEAT": float(os.environ.get("HEARTBEAT", "15")),
        "MAX_JOBS": int(os.environ.get("MAX_JOBS", "4")),  # jobs running at once on each app server
        # One user's jobs running at once on all servers: one user alone cannot take every place.
        "JOBS_PER_USER": int(os.environ.get("JOBS_PER_USER", "2")),
        # Seconds a finished job is kept.
        "KEEP_FINISHED": int(os.environ.get("KEEP_FINISHED", "3600")),
    }
    if os.environ.get("SECRET_KEY"):
        settings["SECRET_KEY"] = os.environ.get("SECRET_KEY")
    return settings


def create_app(config=None):
    """The app, with the settings of the environment, then those of `config` (a dict: a test's
    own database, say). Creates the instance folder, the key and the tables if they are missing,
    listens to Redis, and starts the background tasks."""
    settings = {**from_the_environment(), **(config or {})}
    app = Flask(__name__, instance_path=os.path.abspath(settings["INSTANCE_PATH"]))
    # The folder and what this process creates (the key, the database) are for this user alone:
    # with the key, anyone could sign a session cookie. chmod: mode= sets nothing on a folder that
    # exists.
    os.umask(0o077)
    os.makedirs(app.instance_path, exist_ok=True)
    os.chmod(app.instance_path, 0o700)
    app.config.update(
        DATABASE=os.path.join(app.instance_path, "chat.sqlite"),
        SESSION_COOKIE_SECURE=True,  # sent over HTTPS only (HttpOnly is Flask's default)
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
        # Flask-Limiter counts in Redis, so that both servers share the counts (accounts.py); when
        # Redis does not answer, each counts in its own memory.
        RATELIMIT_STORAGE_URI=settings["REDIS_URL"],
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
    )
    app.config.update(settings)
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = session_key(app)

    # Every POST needs its form's csrf_token (Socket.IO's requests are answered before Flask's).
    CSRFProtect(app)
    accounts.limiter.init_app(app)
    accounts.no_one_hash(app.config["PASSWORD_HASH"])  # made now: a first refusal takes no longer
    login_manager = LoginManager(app)
    login_manager.user_loader(accounts.load_user)
    login_manager.login_view = "accounts.login"
    login_manager.login_message = "Sign in to chat."
    registry.init_app(app)
    jobs.init_app(app)
    # gevent, the worker gunicorn runs (a greenlet per connection); same-origin only, 64 KiB, as
    # in step 08. async_handlers=False: a socket's events are handled one after the other, in the
    # order its page sent them (by default each runs in a greenlet of its own, and two quick
    # messages could be stored the other way round). message_queue: every emit reaches the pages
    # of both servers (step 05). WebSocket only: a page's whole connection is one request to one
    # server, so nginx needs no sticky sessions.
    socketio.init_app(
        app,
        async_mode="gevent",
        async_handlers=False,
        max_http_buffer_size=64 * 1024,
        message_queue=app.config["REDIS_URL"],
        transports=["websocket"],
        ping_interval=app.config["PING_INTERVAL"],
    )
    # Listen to Redis from the start: python-socketio subscribes at the first connection, and a
    # page that lands on a server just (re)started must not miss what the other server publishes.
    socketio.server.manager.initialize()
    socketio.server.manager_initialized = True
    # (No connections.note_upgrades, as in step 08: over WebSocket only, no socket upgrades.)
    # nginx says in X-Forwarded-For, -Proto and -Host who asked for what (one proxy: trust one
    # value of each). Outermost, so that Socket.IO's Origin check sees them too.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)

    app.session_interface = SessionOncePerSocket()
    app.after_request(add_security_headers)
    app.register_blueprint(accounts.blueprint)
    app.register_blueprint(rooms.blueprint)
    app.register_blueprint(jobs.blueprint)
    db.init_app(app)
    start_tasks(app)
    return app


def session_key(app):
    """A key made on first run and kept in the instance folder, so that people stay signed in
    across a restart (when neither the environment nor the config gives a SECRET_KEY)."""
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


def add_security_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    return response


# No `if __name__ == "__main__"`: gunicorn serves this app (see the Procfile).
