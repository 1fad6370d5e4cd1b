"""People of steps 07 to 09, for tests and the bench: sign up, sign in and sign out, rooms.

- Over HTTP, as a script would: `sign_up`, `sign_in` and `sign_out` give or take a `Person`, whose
  requests session holds the session cookie; `post_form` submits any of the pages' forms;
  `create_room` makes a private room with members; `rows` reads the database.
- On the wire, over a socket of the `connect` fixture (clients.SocketIOByHand): `send_to`,
  `messages_until`, `presence_until`.
(In the browser, as a person would: toolkit/pages.py.)

The servers of steps 07 and 08 and step 09's stack all have `url` (step 09's over HTTPS, with its
self-signed `certificate`).
"""

import re
import secrets
import sqlite3
from dataclasses import dataclass

import requests

PASSWORD = "correct horse"
OK = {"ok": True}  # what the server answers a join or a message it accepted
NO_SUCH_ROOM = {"error": "There is no room by that name that you may enter."}
REFUSED = '44{"message":"You are not signed in: sign in again."}'  # Socket.IO's connect error
# Every form carries the session's token; the jobs page renders it without `type`.
CSRF_TOKEN = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')


def unique(prefix):
    """A name no other test takes: the tests of a module share a server and its database."""
    return f"{prefix}-{secrets.token_hex(3)}"


# --- over HTTP ---


@dataclass
class Person:
    name: str
    http: requests.Session

    @property
    def cookie(self):
        """The Cookie header a socket's handshake carries."""
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())


class FromAddress(requests.adapters.HTTPAdapter):
    """Connections from another loopback address (Linux routes all of 127/8 to `lo`)."""

    def __init__(self, address):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


def session(server):
    """A browser's cookies and requests: a requests.Session, or for a step in this process
    (toolkit.inprocess.InProcess) Flask's test client in its clothes."""
    if hasattr(server, "http_session"):
        return server.http_session()
    http = requests.Session()
    http.trust_env = False  # the servers are local: no proxy, and no CA bundle from the environment
    if hasattr(server, "certificate"):
        http.verify = str(server.certificate)  # step 09's, self-signed
    return http


def csrf_token(html):
    return CSRF_TOKEN.search(html)[1]


def post_form(http, server, path, form_page="/login", **fields):
    """Submit a form as its page would: with the csrf_token of this session's pages, and the
    page as Referer (Flask-WTF checks it over HTTPS). /login is / once signed in."""
    page = http.get(f"{server.url}{form_page}")
    token = csrf_token(page.text)
    return http.post(
        f"{server.url}{path}", data={"csrf_token": token, **fields}, headers={"Referer": page.url}
    )


def sign_up(server, name=None):
    person = Person(name or unique("user"), session(server))
    fields = {"username": person.name, "password": PASSWORD}
    response = post_form(person.http, server, "/signup", "/signup", **fields)
    assert response.url == f"{server.url}/", response.text  # on the chat page: signed in
    return person


def sign_in(server, name):
    """`name` signed in once more: another login, as on another device."""
    person = Person(name, session(server))
    response = post_form(person.http, server, "/login", username=name, password=PASSWORD)
    assert response.url == f"{server.url}/", response.text
    return person


def sign_out(person, server):
    response = post_form(person.http, server, "/logout", "/")
    assert response.url.startswith(f"{server.url}/login"), response.text


# --- rooms, the database, and the chat on the wire ---


def rows(server, sql, *args):
    with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True) as database:
        return database.execute(sql, args).fetchall()


def create_room(server, owner, members=()):
    room = unique("room")
    assert post_form(owner.http, server, "/rooms", name=room).url == f"{server.url}/?room={room}"
    for member in members:
        response = post_form(owner.http, server, f"/rooms/{room}/members", username=member.name)
        assert response.status_code == 200, response.text
    return room


def user_id(server, person):
    return rows(server, "SELECT id FROM users WHERE name = ?", person.name)[0][0]


def send_to(socket, room, text):
    """Send a chat message over the socket; the acknowledgement's answer."""
    return socket.call("send message", {"room": room, "text": text})


def messages_until(socket, text):
    """The `new message` events a socket receives, up to the one whose text is `text`."""
    received = []
    while not received or received[-1]["text"] != text:
        name, data = socket.event()
        if name == "new message":
            received.append(data)
    return received


def texts_of(messages):
    return [message["text"] for message in messages]


def presence_until(socket, room, names):
    """The `presence` events for `room` a socket receives, up to one listing `names`."""
    received = []
    while not received or received[-1] != names:
        name, data = socket.event()
        if name == "presence" and data["room"] == room:
            received.append(data["names"])
    return received
