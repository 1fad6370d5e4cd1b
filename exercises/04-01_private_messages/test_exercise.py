"""Exercise 04-01: a private message reaches the page whose sid it names, and the sender's."""

import json

import pytest

from toolkit.clients import SocketIOByHand


@pytest.fixture
def alice_bob_carol(serve):
    server = serve("04_socketio_broadcast", CLOCK_INTERVAL=3600)  # no ticks in between
    clients = [SocketIOByHand(server) for _ in range(3)]
    yield clients
    for client in clients:
        client.close()


def send_private(sender, data):
    """The answer to a `send private` event: a step without the event never answers."""
    return sender.answer_to(sender.emit("send private", data, ack=True), timeout=2)


def sid_of(client):
    """The Socket.IO sid the server gave this client: its answer to connecting, 40{"sid":...}."""
    return json.loads(client.answer[2:])["sid"]


def test_a_private_message_reaches_bob_and_alice_and_not_carol(alice_bob_carol):
    alice, bob, carol = alice_bob_carol
    private = {"to": sid_of(bob), "data": "psst, Bob", "username": "Alice"}
    assert send_private(alice, private) == {"ok": True}
    alice.say("hello, everyone", name="Alice")
    for reader in (bob, alice):
        message = reader.next_event("new message")
        assert (message["name"], message["text"]) == ("Alice", "psst, Bob")
    # Carol's next message is the public one: the private one never came before it.
    assert carol.next_event("new message")["text"] == "hello, everyone"


def test_a_private_message_to_an_unknown_sid_is_refused(alice_bob_carol):
    alice, _bob, _carol = alice_bob_carol
    private = {"to": "nobody", "data": "anyone there?", "username": "Alice"}
    assert "error" in send_private(alice, private)
