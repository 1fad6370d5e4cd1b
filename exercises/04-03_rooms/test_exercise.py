"""Exercise 04-03: rooms. A page names its room when it connects; a message goes to its room."""

import re

import pytest
from playwright.sync_api import expect

from toolkit.clients import SocketIOByHand, messages, open_chat, say
from toolkit.pages import no_reload

STEP = "04_socketio_broadcast"


@pytest.fixture
def server(serve):
    return serve(STEP, CLOCK_INTERVAL=3600)  # no ticks in between


@pytest.fixture
def by_hand(server):
    """Socket.IO clients spoken by hand: `alice = by_hand(room="general")`."""
    clients = []

    def open_client(room=None):
        clients.append(SocketIOByHand(server, auth=None if room is None else {"room": room}))
        return clients[-1]

    yield open_client
    for client in clients:
        client.close()


def send(client, text):
    """Send a message and wait for its acknowledgement."""
    assert client.call("send message", {"data": text, "username": "someone"}) == {"ok": True}


def test_a_message_reaches_its_own_room_only(by_hand):
    alice, bob = by_hand(room="general"), by_hand(room="random")
    carol = by_hand()  # names no room: lands in general
    send(bob, "in random")
    send(alice, "in general")
    send(bob, "random again")
    # Each client's messages come in the order they were sent: the first one a client gets
    # would be "in random" if it had reached general.
    assert alice.next_event("new message")["text"] == "in general"
    assert carol.next_event("new message")["text"] == "in general"
    assert bob.next_event("new message")["text"] == "in random"
    assert bob.next_event("new message")["text"] == "random again"


def test_a_room_that_does_not_exist_is_refused(by_hand):
    mallory = by_hand(room="nowhere")
    assert mallory.answer.startswith("44"), f"connected to no room: {mallory.answer}"


@pytest.mark.e2e
def test_alice_and_carol_in_general_never_see_bob_in_random(new_user, server):
    alice, bob, carol = new_user(), new_user(), new_user()
    open_chat(alice, server, "Alice")
    open_chat(carol, server, "Carol")
    open_chat(bob, server, "Bob")
    # Bob follows the page's link to random (a new page: that is how this page changes rooms).
    rooms = bob.get_by_role("navigation", name="Rooms")
    expect(rooms).to_be_visible()
    rooms.get_by_role("link", name="random").click()
    expect(bob.get_by_role("heading", name="random")).to_be_visible()
    expect(bob.locator("#status")).to_have_text("connected")
    bob.get_by_label("Name").fill("Bob")
    with no_reload(alice), no_reload(carol):
        say(bob, "anyone in random?")
        expect(bob.get_by_label("Message")).to_have_value("")  # sent: acknowledged
        say(alice, "hello, general")
        for page in (alice, carol):
            expect(messages(page)).to_have_text([re.compile(r"^Alice \d\d:\d\d hello, general$")])
        expect(messages(bob)).to_have_text([re.compile(r"^Bob \d\d:\d\d anyone in random\?$")])
