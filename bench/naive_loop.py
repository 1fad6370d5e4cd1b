"""Step 03's chat with the obvious broadcast, `for ws in clients: ws.send(...)`, for the bench.

Same page, protocol, checks and templates as steps/03_chat/app.py; only hub.py is replaced. A
client that stops reading blocks `ws.send()`, and with it the loop, the lock and every sender.

Run: HOST=127.0.0.1 PORT=5000 python bench/naive_loop.py
"""

import contextlib
import os
import socket
import threading
from collections import deque

from simple_websocket import ConnectionClosed

from toolkit.launcher import load_step

step_03 = load_step("03_chat")


class NaiveHub:
    """hub.Hub's methods done the obvious way: the sender's thread writes to every socket."""

    def __init__(self, history_size: int):
        self.clients = set()
        self.history = deque(maxlen=history_size)
        # Two threads writing to one socket at once corrupt its frames: one lock for every write.
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, ws) -> bool:
        return ws in self.clients  # a naive hub drops nobody

    def join(self, ws):
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as hub.py does
        with self.lock:
            if self.history:
                ws.send("".join(self.history))
            self.clients.add(ws)
        return ws

    def leave(self, ws) -> None:
        with self.lock:
            self.clients.discard(ws)

    def send(self, ws, frame: str) -> None:
        with self.lock:
            ws.send(frame)

    def broadcast(self, frame: str, remember: str | None = None) -> None:
        with self.lock:
            if remember is not None:
                self.history.append(remember)
            for ws in self.clients:
                with contextlib.suppress(ConnectionClosed):  # one that is leaving right now
                    ws.send(frame)


step_03.hub = NaiveHub(history_size=int(os.environ.get("HISTORY", "50")))

if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "5000"))
    step_03.app.run(host=host, port=port)
