"""Step 08: under attack: step 07's rooms and logins, attacked hole by hole, and defended.

The same chat as step 07 (accounts, public and private rooms, the checks in the socket handlers,
history in SQLite and catch-up by id), with a defence for each attack its README's table lists:
events named `connect` and `disconnect`, connections that never sign in or ignore the close,
members who never read, a `last_id` too big for SQLite, password guessing and timing, easy
passwords, forced membership, names probed, stolen tokens, logins without end, readable instance
files, and a page framed by another site. Run it with `make step-08` or `python app.py`.

The app is made by `create_app()`, as in Flask's tutorial: importing a module of this step does
nothing else. The files, in reading order:
- app.py: the configuration, the extensions and the blueprints, wired together (this file);
- accounts.py: sign up, sign in, sign out (Flask-Login), with the forms of forms.py (Flask-WTF);
- rooms.py: the chat page, creating rooms, and their members;
- chat.py: the Socket.IO handlers, who is online, presence;
- messages.py: what the handlers check and store: who may enter a room, messages, catch-up by id;
- rate_limit.py: the rate limit on messages, per user;
- connections.py: Engine.IO's connections, policed: those that never sign in or fall behind;
- db.py and schema.sql: the SQLite database, as Flask's tutorial uses it.
"""

import contextlib
import os
import secrets

import accounts
import db
import rooms
from chat import socketio, start_tasks
from connections import note_upgrades
from flask import Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

HERE = os.path.dirname(__file__)
# What a page may load: everything from this origin and nothing from anywhere else; no inline
# script, no plugins, no framing by other sites (a framed page can be clicked through a decoy),
# forms that post to this origin only.
CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none';"
    " form-action 'self'"
)


def from_the_environment():
    """The settings the environment may change (the tests make limits small and times short),
    with their defaults."""
    settings = {
        # The database and the key that signs session cookies live in an instance folder created
        # on first run: this step's instance/, or INSTANCE_PATH. (Flask's default for a script run
        # as `python app.py` would be instance/ in whatever directory it was started from.)
        "INSTANCE_PATH": os.environ.get("INSTANCE_PATH") or os.path.join(HERE, "instance"),
        # Messages a user may send at once, then this many a second; 0: no limit (rate_limit.py).
        "SEND_BURST": int(os.environ.get("SEND_BURST", "10")),
        "SEND_RATE": float(os.environ.get("SEND_RATE", "5")),
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
    }
    if os.environ.get("SECRET_KEY"):
        settings["SECRET_KEY"] = os.environ.get("SECRET_KEY")
    return settings


def create_app(config=None):
    """The app, with the settings of the environment, then those of `config` (a dict: a test's
    own database, say). Creates the instance folder, the key and the tables if they are missing,
    and starts the background tasks."""
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
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
        RATELIMIT_STORAGE_URI="memory://",  # Flask-Limiter counts in this process (accounts.py)
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
    # threading, as in step 04; same-origin only (cors_allowed_origins left at its default),
    # 64 KiB. async_handlers=False: a socket's events are handled one after the other, in the
    # order its page sent them (by default each runs in a thread of its own, and two quick
    # messages could be stored the other way round).
    socketio.init_app(
        app,
        async_mode="threading",
        async_handlers=False,
        max_http_buffer_size=64 * 1024,
    )
    # Which TCP connection a page's socket upgraded to WebSocket on, for connections.py to shut
    # down should the page never sign in.
    app.wsgi_app = note_upgrades(app.wsgi_app)

    app.after_request(add_security_headers)
    app.register_blueprint(accounts.blueprint)
    app.register_blueprint(rooms.blueprint)
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


if __name__ == "__main__":
    # socketio.run refuses Werkzeug's development server when stdin is not a terminal (tests,
    # notebooks, CI); this flag says we know it is a development server.
    socketio.run(
        create_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
