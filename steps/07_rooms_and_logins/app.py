"""Step 07: rooms and logins: who may hear what, and nothing lost across a reconnect or a restart.

People sign up and sign in, chat in public rooms and in private rooms with members, and every
message is stored in SQLite before it is broadcast. A socket must come from a signed-in browser,
and each `join` and `send message` is checked in its handler: the page is not what keeps a room
private. A page sends the id of the last message it has shown on every (re)connect, and each room
it joins first sends what it missed. Run it with `make step-07` or `python app.py`.

The files, in reading order:
- app.py: the configuration, the extensions and the blueprints, wired together (this file);
- accounts.py: sign up, sign in, sign out (Flask-Login), with the forms of forms.py (Flask-WTF);
- rooms.py: the chat page, creating rooms, and their members;
- chat.py: the Socket.IO handlers, who is online, the rate limit, presence, catch-up by id;
- db.py and schema.sql: the SQLite database, as Flask's tutorial uses it.
"""

import contextlib
import os
import secrets

import accounts
import db
import rooms
from chat import socketio
from flask import Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

# The database and the key that signs session cookies live in an instance folder created on
# first run: this step's instance/, or INSTANCE_PATH. (Flask's default for a script run as
# `python app.py` would be instance/ in whatever directory it was started from.)
instance = os.environ.get("INSTANCE_PATH") or os.path.join(os.path.dirname(__file__), "instance")
app = Flask(__name__, instance_path=os.path.abspath(instance))
# The folder and what this process creates (the key, the database) are for this user alone: with
# the key, anyone could sign a session cookie. chmod: mode= sets nothing on a folder that exists.
os.umask(0o077)
os.makedirs(app.instance_path, exist_ok=True)
os.chmod(app.instance_path, 0o700)
# What a page may load: everything from this origin and nothing from anywhere else; no inline
# script, no plugins, no framing by other sites (a framed page can be clicked through a decoy),
# forms that post to this origin only.
CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none';"
    " form-action 'self'"
)
app.config.update(
    DATABASE=os.path.join(app.instance_path, "chat.sqlite"),
    SESSION_COOKIE_SAMESITE="Lax",
    WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
    RATELIMIT_STORAGE_URI="memory://",  # Flask-Limiter counts in this process (accounts.py)
)


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

# Every POST needs its form's csrf_token (Socket.IO's requests are answered before Flask's).
CSRFProtect(app)
accounts.limiter.init_app(app)
login_manager = LoginManager(app)
login_manager.user_loader(accounts.load_user)
login_manager.login_view = "accounts.login"
login_manager.login_message = "Sign in to chat."
# threading, as in step 04; same-origin only (cors_allowed_origins left at its default), 64 KiB.
# async_handlers=False: a socket's events are handled one after the other, in the order its page
# sent them (by default each runs in a thread of its own, and two quick messages could be stored
# the other way round).
socketio.init_app(
    app,
    async_mode="threading",
    async_handlers=False,
    max_http_buffer_size=64 * 1024,
)


@app.after_request
def add_security_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    return response


app.register_blueprint(accounts.blueprint)
app.register_blueprint(rooms.blueprint)
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
