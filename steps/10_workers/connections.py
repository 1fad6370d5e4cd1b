"""Engine.IO's connections, policed: those that never sign in, and those that fall behind.

Under Socket.IO, Engine.IO opens a connection before its page signs in, and queues what we send
to it without limit. One background task, `look_after_connections` (chat.py starts it for the
app), looks at every connection every SOCKET_CHECK seconds:
- a connection that has not signed in (connected to Socket.IO) SIGN_IN_TIME seconds after it
  opened is closed: a refused `connect` leaves the Engine.IO connection, and its thread, open.
  A client may ignore the close packet and keep its TCP connection, and with it a thread or two
  of the server: CLOSE_GRACE seconds later, that connection is shut down (`shut_down`);
- a client more than QUEUE packets behind is dropped (`drop_clients_behind`).
It reads Engine.IO's own records (internals, pinned in pyproject.toml), knows nothing of users or
rooms, and imports no other module of the step.
"""

import contextlib
import logging
import queue
import socket
import time
from urllib.parse import parse_qs

SOCKET_CHECK = 0.2  # seconds between two looks at every connection
CLOSE_GRACE = 1  # seconds a closed connection has to send its close packet and go, by itself

logger = logging.getLogger(__name__)
# Engine.IO id -> the request that upgraded that connection from polling to WebSocket, while the
# WebSocket lasts (`note_upgrades`): Engine.IO keeps only the request that opened a connection.
upgrades = {}


def look_after_connections(app):
    """Every SOCKET_CHECK seconds: close the connections that have not signed in within
    SIGN_IN_TIME (and shut them down CLOSE_GRACE later), and drop the sockets more than QUEUE
    packets behind. Runs for ever, with the settings of `app`."""
    server = app.extensions["socketio"].server  # the Socket.IO server made for this app
    sign_in_time, bound = app.config["SIGN_IN_TIME"], app.config["QUEUE"]
    opened = {}  # Engine.IO id -> when this loop first saw it without a Socket.IO connection
    over = {}  # Engine.IO id -> packets queued at the last look, if more than QUEUE
    closed = {}  # Engine.IO id -> (its TCP connection, if it has one; when this loop closed it)
    while True:
        server.sleep(SOCKET_CHECK)
        now = time.monotonic()
        connections = server.eio.sockets.copy()  # Engine.IO id -> its connection
        strangers = [
            eio_sid
            for eio_sid in connections
            if server.manager.sid_from_eio_sid(eio_sid, "/") is None
        ]
        opened = {eio_sid: opened.get(eio_sid, now) for eio_sid in strangers}
        for eio_sid, since in opened.items():
            if now - since > sign_in_time and eio_sid not in closed:
                # Before the close: that forgets the request that opened it.
                closed[eio_sid] = tcp_connection(server, eio_sid), now
                # wait=False: the close packet goes after what is queued (the refusal, say).
                connections[eio_sid].close(wait=False)
        for eio_sid, (tcp, since) in list(closed.items()):
            if now - since > CLOSE_GRACE:
                del closed[eio_sid]
                shut_down(tcp)
        over = drop_clients_behind(connections, over, bound)


def drop_clients_behind(connections, over_before, bound):
    """Drop every client more than `bound` (QUEUE) packets behind at two looks in a row, and no
    fewer at the second: it stopped reading, or cannot keep up. (A join queues up to HISTORY
    missed messages at once: a page that reads takes some of them before the next look.) Returns,
    for the next look, the clients it kept that are more than `bound` behind.

    Engine.IO queues what we emit to a client without limit, and offers no setting for one; its
    heartbeat ends a client that stops answering pings, but only after 25 + 20 s, and never one
    that answers them without reading. So we look at its queues (an internal, pinned in
    pyproject.toml; the tests of steps 04 and 08 fail if it changes).
    """
    over = {}
    for eio_sid, client in connections.items():
        behind = client.queue.qsize()
        if behind <= bound:
            continue
        if eio_sid not in over_before or behind < over_before[eio_sid]:
            over[eio_sid] = behind  # over the bound at this look only, or catching up
        else:
            logger.warning("Dropped client %s: %d packets behind", client.sid, behind)
            # abort: no close packet (it would wait behind the rest); runs our disconnect handler.
            client.close(wait=False, abort=True)
            # Free what it will never read. Its writer thread may be stuck sending to it until
            # its connection closes; the None ends that thread as soon as it gets there.
            with contextlib.suppress(queue.Empty):
                while True:
                    client.queue.get_nowait()
            client.queue.put(None)
    return over


def tcp_connection(server, eio_sid):
    """The TCP connection that carries an Engine.IO connection's WebSocket: the server (Werkzeug,
    gunicorn) puts it in the request's environ. None over long-polling, whose requests come on
    whichever connection the client has, and may be its next page's."""
    environ = upgrades.get(eio_sid) or server.environ.get(eio_sid, {})
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return None
    return environ.get("werkzeug.socket") or environ.get("gunicorn.socket")


def shut_down(tcp):
    """End a TCP connection under whatever still waits on it: closing a socket does not wake a
    thread blocked in recv() on it (Linux), and after its close packet Werkzeug's thread waits
    there for a next request, simple-websocket's for a frame. Shutting it down wakes both. (Step
    03's hub.py does the same for a client it dropped.)"""
    if tcp is not None:
        with contextlib.suppress(OSError):  # the client went away already
            tcp.shutdown(socket.SHUT_RDWR)


def note_upgrades(wsgi_app):
    """Wrap the app's WSGI callable so that `upgrades` holds, while it lasts, the request of each
    connection that upgraded from long-polling to WebSocket: that request's TCP connection is
    the one to shut down."""

    def noting(environ, start_response):
        eio_sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid", [None])[0]
        if (
            eio_sid is None
            or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
            or upgrades.setdefault(eio_sid, environ) is not environ  # a second one: refused
        ):
            return wsgi_app(environ, start_response)
        try:
            return wsgi_app(environ, start_response)
        finally:
            del upgrades[eio_sid]

    return noting
