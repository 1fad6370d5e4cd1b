"""Exercise 04-02: a page that connects receives the latest HISTORY messages, oldest first, in one
`history` event, then the live ones."""

import re

import pytest
from playwright.sync_api import expect

from toolkit.clients import SocketIOByHand, messages, open_chat
from toolkit.pages import no_reload

STEP = "04_socketio_broadcast"


@pytest.fixture
def server(serve):
    return serve(STEP, HISTORY=3, CLOCK_INTERVAL=3600)  # no ticks in between


def send_in_order(server, *texts):
    """Send messages from Alice's client, each acknowledged before the next: the order is known."""
    alice = SocketIOByHand(server)
    for text in texts:
        assert alice.call("send message", {"data": text, "username": "Alice"}) == {"ok": True}
    return alice


def test_a_newcomer_receives_the_last_three_in_one_history_event_then_live_ones(server):
    alice = send_in_order(server, "one", "two", "three", "four")
    bob = SocketIOByHand(server)
    try:
        history = bob.next_event("history", timeout=2)  # a step without history never sends one
        assert [message["text"] for message in history] == ["two", "three", "four"]
        assert {message["name"] for message in history} == {"Alice"}
        alice.say("five", name="Alice")
        assert bob.next_event("new message")["text"] == "five"
    finally:
        alice.close()
        bob.close()


@pytest.mark.e2e
def test_a_page_opened_after_three_messages_shows_them_once_in_order_then_live_ones(page, server):
    alice = send_in_order(server, "one", "two", "three")
    try:
        open_chat(page, server, "Bob")
        expect(messages(page)).to_have_text(
            [re.compile(rf"^Alice \d\d:\d\d {text}$") for text in ("one", "two", "three")]
        )
        with no_reload(page):
            alice.say("four", name="Alice")
            expect(messages(page)).to_have_text(
                [re.compile(f"{text}$") for text in ("one", "two", "three", "four")]
            )
    finally:
        alice.close()
