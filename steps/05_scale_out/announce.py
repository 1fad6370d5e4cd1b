"""Push an announcement to every page on every server, from a process that serves no page.

    python announce.py "The chat closes at six."

The pattern for background jobs, cron jobs and notebooks: a write-only SocketIO publishes to
the Redis channel the servers listen on, and each server emits to its own clients.
"""

import os
import sys

import redis
from flask_socketio import SocketIO

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL = "flask-socketio"  # Flask-SocketIO's default; servers and emitters must agree on it


def main():
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        sys.exit('Usage: python announce.py "text of the announcement"')
    # Redis pub/sub keeps nothing: a message nobody is subscribed to is gone. So look first.
    try:
        servers = redis.Redis.from_url(REDIS_URL, retry=None).pubsub_numsub(CHANNEL)[0][1]
    except redis.RedisError as error:
        sys.exit(f"Redis at {REDIS_URL} does not answer ({error}); nothing was announced.")
    # No app: this SocketIO can only publish to the queue, it accepts no connections.
    socketio = SocketIO(message_queue=REDIS_URL, channel=CHANNEL)
    socketio.emit("announcement", {"text": sys.argv[1].strip()})
    print(f"Announced to the pages of {servers} server(s) listening on {REDIS_URL}.")


if __name__ == "__main__":
    main()
