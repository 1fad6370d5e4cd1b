"""Engine.IO's connections, policed: those that never sign in, and those that fall behind.

Under Socket.IO, Engine.IO opens a connection before its page signs in, and queues what we send
to it without limit. One background task, `look_after_connections` (chat.py starts it for the
app), looks at every connection every SOCKET_CHECK seconds:
- a connection that has not signed in (connected to Socket.IO) SIGN_IN_TIME seconds after it
  opened is closed: a refused `connect` leaves the Engine.IO connection, and its thread, open;
- a client more than QUEUE packets behind is dropped (`drop_clients_behind`).
It reads Engine.IO's own records (internals, pinned in pyproject.toml), knows nothing of users or
rooms, and imports no other module of the step.
"""

import contextlib
import logging
import queue
import time

SOCKET_CHECK = 0.2  # seconds between two looks at every connection

logger = logging.getLogger(__name__)


def look_after_connections(app):
    """Every SOCKET_CHECK seconds: close the connections that have not signed in within
    SIGN_IN_TIME, and drop the sockets more than QUEUE packets behind. Runs for ever, with the
    settings of `app`."""
    server = app.extensions["socketio"].server  # the Socket.IO server made for this app
    sign_in_time, bound = app.config["SIGN_IN_TIME"], app.config["QUEUE"]
    opened = {}  # Engine.IO id -> when this loop first saw it without a Socket.IO connection
    over = {}  # Engine.IO id -> packets queued at the last look, if more than QUEUE
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
            if now - since > sign_in_time:
                # wait=False: the close packet goes after what is queued (the refusal, say).
                connections[eio_sid].close(wait=False)
        over = drop_clients_behind(connections, over, bound)


def drop_clients_behind(connections, over_before, bound):
    """Drop every client more than `bound` (QUEUE) packets behind at two looks in a row, and no
    fewer at the second: it stopped reading, or cannot keep up. (A join queues up to HISTORY
    missed messages at once: a page that reads takes some of them before the next look.) Returns,
    for the next look, the clients it kept that are more than `bound` behind.

    Engine.IO queues what we emit to a client without limit, and offers no setting for one; its
    heartbeat ends a client that stops answering pings, but only after 25 + 20 s, and never one
    that answers them without reading. So we look at its queues (an internal, pinned in
    pyproject.toml; the tests of steps 04 and 07 fail if it changes).
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
