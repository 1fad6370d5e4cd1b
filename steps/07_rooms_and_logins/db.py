"""The SQLite database, as Flask's tutorial uses it: one connection per request or socket event.

Flask-SocketIO runs each event handler in an app context of its own, so `g` is fresh for every
event and the connection is closed when the handler returns, as after an HTTP request.
"""

import sqlite3

from flask import current_app, g


def connection():
    if "db" not in g:
        # timeout: wait up to 10 s for another writer (a second thread or process) to finish.
        g.db = sqlite3.connect(current_app.config["DATABASE"], timeout=10)
        g.db.row_factory = sqlite3.Row
        g.db.execute("PRAGMA foreign_keys = ON")
        # In WAL mode, NORMAL syncs the log to disk at checkpoints, not at every commit: a
        # message costs a write, not a wait for the disk. An application crash loses nothing; an
        # OS crash or a power cut may lose the last commits (the database stays whole). See the
        # course's bench/capacity.md, "Messages a second".
        g.db.execute("PRAGMA synchronous = NORMAL")
    return g.db


def query(sql, *args):
    return connection().execute(sql, args).fetchall()


def change(sql, *args):
    """Run one INSERT, UPDATE or DELETE in a transaction of its own; return the new row's id."""
    with connection() as database:
        return database.execute(sql, args).lastrowid


def close(exception=None):
    database = g.pop("db", None)
    if database is not None:
        database.close()


def init_app(app):
    """Create the tables and rooms that are missing (schema.sql), and close each connection."""
    with sqlite3.connect(app.config["DATABASE"], timeout=10) as database:
        # WAL: readers do not wait for the writer (pages catch up while others chat). The
        # setting is kept in the file.
        database.execute("PRAGMA journal_mode = WAL")
        database.executescript(app.open_resource("schema.sql").read().decode())
    database.close()
    app.teardown_appcontext(close)
