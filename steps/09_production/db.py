"""The SQLite database: one connection per process, kept (step 08 opened one per event).

Under gevent the process's greenlets share one thread and never switch inside a call to SQLite,
so they can share the connection; each transaction is one `with` block (README, "Messages a
second"). The key holds the process id: a forked process opens its own.
"""

import os
import sqlite3

from flask import current_app

connections = {}  # (process id, database file) -> its connection


def connection():
    key = (os.getpid(), current_app.config["DATABASE"])
    if key not in connections:
        # timeout: wait up to 10 s for another writer (the other app server) to finish.
        database = sqlite3.connect(key[1], timeout=10)
        database.row_factory = sqlite3.Row
        database.execute("PRAGMA foreign_keys = ON")
        # In WAL mode, NORMAL syncs the log to disk at checkpoints, not at every commit: a
        # message costs a write, not a wait for the disk. An application crash loses nothing; an
        # OS crash or a power cut may lose the last commits (the database stays whole). See the
        # course's bench/capacity.md, "Messages a second".
        database.execute("PRAGMA synchronous = NORMAL")
        connections[key] = database
    return connections[key]


def query(sql, *args):
    return connection().execute(sql, args).fetchall()


def change(sql, *args):
    """Run one INSERT, UPDATE or DELETE in a transaction of its own; return the new row's id."""
    with connection() as database:
        return database.execute(sql, args).lastrowid


def init_app(app):
    """Create the tables and rooms that are missing (schema.sql)."""
    with sqlite3.connect(app.config["DATABASE"], timeout=10) as database:
        # WAL: readers do not wait for the writer (pages catch up while others chat). The
        # setting is kept in the file.
        database.execute("PRAGMA journal_mode = WAL")
        database.executescript(app.open_resource("schema.sql").read().decode())
    database.close()
