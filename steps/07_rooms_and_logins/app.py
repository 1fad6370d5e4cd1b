"""Step 07: rooms and logins: who may hear what, and nothing lost across a reconnect or a restart.

People sign up and sign in, chat in public rooms and in private rooms with members, and every
message is stored in SQLite before it is broadcast. A socket must come from a signed-in browser,
and each `join` and `send message` is checked in its handler: the page is not what keeps a room
private. A page sends the id of the last message it has shown on every (re)connect, and each room
it joins first sends what it missed. Run it with `make step-07` or `python app.py`.

A first version: it has holes an attacker can use, which step 08 shows and closes.

The app is made by `create_app()`, as in Flask's tutorial (importing a module does nothing else):
app.py wires the settings and the extensions to the blueprints of accounts.py and rooms.py, and
to the Socket.IO handlers of chat.py.
"""

import os
import secrets

import accounts
import db
import rooms
from chat import socketio, start_tasks
from flask import Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

HERE = os.path.dirname(__file__)


def from_the_environment():
    """The settings the environment may change (the tests make limits small), with defaults."""
    settings = {
        # The database and the key that signs session cookies live in this step's instance/
        # folder, created on first run, or in INSTANCE_PATH.
        "INSTANCE_PATH": os.environ.get("INSTANCE_PATH") or os.path.join(HERE, "instance"),
        # Messages a user may send at once, then this many a second; 0: no limit (rate_limit.py).
        "SEND_BURST": int(os.environ.get("SEND_BURST", "10")),
        "SEND_RATE": float(os.environ.get("SEND_RATE", "5")),
        # How passwords are hashed: Werkzeug's default, scrypt at about 170 ms of CPU a hash (the
        # tests, which sign up hundreds of users, set a cheaper one).
        "PASSWORD_HASH": os.environ.get("PASSWORD_HASH", "scrypt"),
    }
    if os.environ.get("SECRET_KEY"):
        settings["SECRET_KEY"] = os.environ.get("SECRET_KEY")
    return settings


def create_app(config=None):
    """The app, with the settings of the environment, then those of `config` (a dict: a test's
    own database, say). Creates the instance folder, the key and the tables if they are missing,
    and starts the background task."""
    settings = {**from_the_environment(), **(config or {})}
    app = Flask(__name__, instance_path=os.path.abspath(settings["INSTANCE_PATH"]))
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        DATABASE=os.path.join(app.instance_path, "chat.sqlite"),
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
    )
    app.config.update(settings)
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = session_key(app)

    CSRFProtect(app)  # every POST needs its form's csrf_token
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
        with open(path, "w") as file:
            file.write(secrets.token_hex(32))
    with open(path) as file:
        return file.read()


if __name__ == "__main__":
    # socketio.run refuses Werkzeug's development server when stdin is not a terminal (tests,
    # notebooks, CI); this flag says we know it is a development server.
    socketio.run(
        create_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        allow_unsafe_werkzeug=True,
    )
