"""What every app server must know about the others' sockets, kept in Redis.

Step 08 kept it in the memory of its one process. With two servers behind nginx, each one knows
only its own sockets, so each writes down in Redis what the others need:
- who is in each room: each server's people per room, under keys that expire unless renewed, so
  that the people of a server that died leave the lists; every page is told their union;
- which sockets each user has, on which login: signing out closes them on every server, and
  removing a member takes them out of the room on every server.
When Redis does not answer, each server goes on with what it knows itself. Each app has a Redis
client of its own (`init_app`); the functions below use the current app's, and its SERVER: this
app server's name (the Procfile sets it).
"""

import contextlib

import redis
from flask import current_app

PRESENCE_TTL = 3  # seconds: the people of a server that died leave the rooms' lists this soon


def init_app(app):
    """Make the app's client for REDIS_URL (it connects at its first command)."""
    # Our own connection. Short timeouts, no retries: when Redis is away, a connect or a
    # sign-out must not wait for it.
    app.extensions["registry"] = redis.Redis.from_url(
        app.config["REDIS_URL"],
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=None,
        decode_responses=True,
    )


def store():
    return current_app.extensions["registry"]


def people_everywhere(here, left):
    """Store this server's people per room in Redis, under keys that expire unless renewed, and
    return the sorted names in each room on every server. Without Redis: this server's own."""
    server = current_app.config["SERVER"]
    try:
        with store().pipeline() as pipe:
            for room in left:
                pipe.delete(f"presence:{room}:{server}")
            for room, names in here.items():
                key = f"presence:{room}:{server}"
                pipe.delete(key).sadd(key, *names).expire(key, PRESENCE_TTL)
            # The names of the servers, so that each reads the others' keys by name: a SCAN of
            # every key in Redis per room, five times a second, cost more than all the rest.
            pipe.sadd("servers", server)
            pipe.execute()
            servers = store().smembers("servers")
            here = {
                room: store().sunion([f"presence:{room}:{name}" for name in servers])
                for room in here
            }
    except redis.RedisError:
        pass
    return {room: sorted(names, key=str.lower) for room, names in here.items()}


def remember_socket(user_id, sid, login):
    """Note in Redis whose socket this is, for whichever server must close it. A server that dies
    leaves its entries behind: closing a socket that is gone does nothing."""
    with contextlib.suppress(redis.RedisError):
        store().hset(f"sockets:{user_id}", sid, login)


def forget_socket(user_id, sid):
    with contextlib.suppress(redis.RedisError):
        store().hdel(f"sockets:{user_id}", sid)


def known_sockets(user_id):
    """The user's sockets on every server, as far as Redis knows: socket id -> login."""
    with contextlib.suppress(redis.RedisError):
        return store().hgetall(f"sockets:{user_id}")
    return {}
