"""Step 08: step 07's chat and step 06's jobs, run as in production, behind nginx.

The Procfile starts two app servers (gunicorn with a gevent worker each, gunicorn.conf.py) that
share Redis and the SQLite database, and nginx in front of them (nginx.conf); `make step-08`
runs it with honcho. There is no `python app.py`. What the app itself changes for that:
- Socket.IO runs on gevent, WebSocket only, and shares every emit through Redis (step 05).
- ProxyFix: behind nginx, URLs, the Origin and CSRF checks see the public https://host:port.
- Cookies are Secure; every page sends a Content-Security-Policy (scripts from this origin only).
- What step 07 kept in one process and every server must know lives in Redis (registry.py): who
  is in each room, and which sockets each user has, so that signing out closes them everywhere.
- Step 06's jobs (jobs.py) keep their events in Redis, so any server can stream any job.

The files, in reading order:
- app.py: the configuration, the extensions and the blueprints, wired together (this file);
- accounts.py: sign up, sign in, sign out (Flask-Login), with the forms of forms.py (Flask-WTF);
- rooms.py: the chat page, creating rooms, and their members;
- chat.py: the Socket.IO handlers, who is online, the rate limit, presence, catch-up by id;
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
import rooms
from chat import socketio
from flask import Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Engine.IO pings every PING_INTERVAL seconds: traffic that keeps nginx from closing a quiet
# socket after proxy_read_timeout (nginx.conf), so that must stay above it.
PING_INTERVAL = float(os.environ.get("PING_INTERVAL", "25"))
# What a page may load: everything from this origin and nothing from anywhere else; no inline
# script (no <script> without src, no onclick, no hx-on), no plugins, no framing by other sites.
# Forms post to this origin only (form-action is not covered by default-src).
CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none';"
    " form-action 'self'"
)

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
app.config.update(
    DATABASE=os.path.join(app.instance_path, "chat.sqlite"),
    SESSION_COOKIE_SECURE=True,  # sent over HTTPS only (HttpOnly is Flask's default)
    SESSION_COOKIE_SAMESITE="Lax",
    WTF_CSRF_TIME_LIMIT=None,  # a chat page stays open for days: its Sign out must still work
    # Flask-Limiter counts in Redis, so that both servers share the counts (accounts.py); when
    # Redis does not answer, each counts in its own memory.
    RATELIMIT_STORAGE_URI=REDIS_URL,
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
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
# gevent, the worker gunicorn runs (a greenlet per connection); same-origin only, 64 KiB, as in
# step 07. async_handlers=False: a socket's events are handled one after the other, in the order
# its page sent them (by default each runs in a greenlet of its own, and two quick messages could
# be stored the other way round). message_queue: every emit reaches the pages of both servers
# (step 05). WebSocket only: a page's whole connection is one request to one server, so nginx
# needs no sticky sessions.
socketio.init_app(
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


@app.after_request
def add_security_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    return response


app.register_blueprint(accounts.blueprint)
app.register_blueprint(rooms.blueprint)
app.register_blueprint(jobs.blueprint)
db.init_app(app)
# No `if __name__ == "__main__"`: gunicorn serves this app (see the Procfile).
