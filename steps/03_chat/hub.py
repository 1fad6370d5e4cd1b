"""The chat room's fan-out: a bounded outbox and one writer thread for every connection.

Broadcasting only puts a frame into each outbox, so it never waits for a network. A client that
stops reading fills its outbox; the next broadcast that finds it full drops that client and closes
its socket with 1013 (try again later). The others never notice.
"""

import contextlib
import queue
import socket
import threading
import time
from collections import deque

from simple_websocket import ConnectionClosed

TRY_AGAIN_LATER = 1013


class Client:
    """One connection: its outbox and the thread that is the only writer of its socket."""

    def __init__(self, ws, queue_size: int, drop_grace: float):
        self.ws = ws
        self.drop_grace = drop_grace
        # Chat frames are small and should leave at once: without TCP_NODELAY the kernel holds a
        # small write back until the previous one is acknowledged (Nagle): tens of milliseconds.
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.outbox = queue.Queue(maxsize=queue_size)
        self.writer = threading.Thread(target=self._write, daemon=True)

    def _write(self) -> None:
        try:
            while isinstance(frame := self.outbox.get(), str):
                self.ws.send(frame)
            if frame is not None:  # an int is a close code
                self.ws.close(reason=frame)
        except (ConnectionClosed, OSError):
            pass  # the client went away; its handler notices and leaves the hub

    def finish(self, close_code: int | None = None) -> None:
        """Stop the writer, dropping what it has not sent; close the socket if given a code."""
        while True:
            try:
                self.outbox.get_nowait()
            except queue.Empty:
                break
        self.outbox.put_nowait(close_code)

    def release(self) -> None:
        """Let the socket's threads end before the server closes it: the last thing a handler does.

        A thread waiting in send() or recv() is not woken when its socket is closed, and a client
        that never reads again leaves our writer in send() and simple-websocket's reader in recv()
        (awaiting the client's close frame) for ever. So both get `drop_grace` seconds to finish,
        then the connection is shut down under whichever still waits.
        """
        deadline = time.monotonic() + self.drop_grace
        for thread in (self.writer, self.ws.thread):
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):  # the client went away already
            self.ws.sock.shutdown(socket.SHUT_RDWR)


class Hub:
    """The connected clients, and the history a newcomer receives before the live frames."""

    def __init__(self, history_size: int, queue_size: int, drop_grace: float):
        self.queue_size = queue_size
        self.drop_grace = drop_grace
        self._clients: set[Client] = set()
        self._history: deque[str] = deque(maxlen=history_size)
        # One lock orders everything: a newcomer gets the history and then exactly the
        # broadcasts made after it, none lost between the two and none twice.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._clients)

    def join(self, ws) -> Client:
        client = Client(ws, self.queue_size, self.drop_grace)
        with self._lock:
            if self._history:
                client.outbox.put_nowait("".join(self._history))  # one frame, the oldest first
            self._clients.add(client)
        client.writer.start()
        return client

    def __contains__(self, client: Client) -> bool:
        return client in self._clients

    def leave(self, client: Client) -> None:
        with self._lock:
            dropped = client not in self._clients
            self._clients.discard(client)
        if not dropped:  # a dropped client's outbox holds the close code its writer must send
            client.finish()
        client.release()

    def send(self, client: Client, frame: str) -> None:
        """Queue a frame for one client (its own error messages, for example)."""
        with self._lock:
            self._offer(client, frame)

    def broadcast(self, frame: str, remember: str | None = None) -> None:
        """Queue a frame for every client; `remember` (if given) goes into the history."""
        with self._lock:
            if remember is not None:
                self._history.append(remember)
            for client in list(self._clients):
                self._offer(client, frame)

    def _offer(self, client: Client, frame: str) -> None:
        if client not in self._clients:
            return  # dropped already: its outbox holds only the close code
        try:
            client.outbox.put_nowait(frame)
        except queue.Full:
            self._clients.discard(client)
            client.finish(TRY_AGAIN_LATER)
