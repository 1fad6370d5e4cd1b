"""Step 01: a WebSocket echo.

The page opens a WebSocket with the browser's own API; the server sends back every message it
receives. Run it with `make step-01` or `python app.py`.
"""

import os

from flask import Flask, render_template
from flask_sock import Sock

MAX_MESSAGE_BYTES = 64 * 1024

app = Flask(__name__)
# simple-websocket accepts messages of any size unless told otherwise; a bigger frame closes
# that one connection with code 1009 (message too big).
app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": MAX_MESSAGE_BYTES}
sock = Sock(app)


@app.get("/")
def index():
    return render_template("index.html")


@sock.route("/echo")
def echo(ws):
    # Flask-Sock runs this in its own thread for each connection; it ends when the client leaves.
    # receive() waits at most a second: simple-websocket 1.1 closes a connection whose message is
    # too big without waking a receive() that waits forever, so the loop checks `connected`.
    while ws.connected:
        message = ws.receive(timeout=1)
        if message is not None:
            ws.send(message)


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
