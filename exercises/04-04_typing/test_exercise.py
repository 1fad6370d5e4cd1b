"""Exercise 04-04: "Alice is typing…" on the other pages, at most one typing event a second."""

import re
import time

import pytest
from playwright.sync_api import expect

from toolkit.clients import SocketIOByHand, messages, open_chat
from toolkit.pages import no_reload

STEP = "04_socketio_broadcast"

# Counts the page's own `typing` emits, wherever in its code they come from.
COUNT_TYPING_EMITS = """() => {
  window.typingSent = 0;
  const emit = socket.emit;
  socket.emit = function (name, ...rest) {
    if (name === "typing") window.typingSent += 1;
    return emit.call(this, name, ...rest);
  };
}"""


def events_until_message(client, text):
    """The names of the events a client receives up to the chat message `text`."""
    names = []
    while (event := client.event())[0] != "new message" or event[1]["text"] != text:
        names.append(event[0])
    return names


def test_twenty_typing_events_at_once_reach_bob_at_most_twice_and_never_mallory(serve):
    server = serve(STEP, CLOCK_INTERVAL=3600)  # no ticks in between
    mallory, bob = SocketIOByHand(server), SocketIOByHand(server)
    try:
        started = time.monotonic()
        for _ in range(20):
            mallory.emit("typing", {"username": "Mallory"}, ack=True)
        # Socket.IO acknowledges an event once its handler has returned (a step without the
        # handler never does): then whatever it relayed is already on its way to Bob.
        for _ in range(20):
            mallory.wait_for("43", timeout=2)
        took = time.monotonic() - started
        assert mallory.call("send message", {"data": "done", "username": "Mallory"}) == {"ok": True}
        relayed = events_until_message(bob, "done").count("typing")
        assert 1 <= relayed <= 1 + took, f"{relayed} of 20 typing events reached Bob"
        assert "typing" not in events_until_message(mallory, "done")
    finally:
        mallory.close()
        bob.close()


@pytest.mark.e2e
def test_bob_sees_alice_typing_until_her_message_arrives(two_users, serve):
    server = serve(STEP, TYPING_SHOWN=60)  # the line goes with the message, not with time
    alice, bob = two_users
    open_chat(alice, server, "Alice")
    open_chat(bob, server, "Bob")
    alice.evaluate(COUNT_TYPING_EMITS)
    with no_reload(alice), no_reload(bob):
        started = time.monotonic()
        alice.get_by_label("Message").press_sequentially("hello, Bob")  # ten keys
        took = time.monotonic() - started
        expect(bob.locator("#typing")).to_have_text("Alice is typing…")
        sent = alice.evaluate("window.typingSent")
        assert 1 <= sent <= 1 + took, f"Alice's page sent {sent} typing events in {took:.1f} s"
        expect(alice.locator("#typing")).to_have_text("")  # not told about herself
        alice.get_by_role("button", name="Send").click()
        expect(messages(bob)).to_have_text([re.compile(r"^Alice \d\d:\d\d hello, Bob$")])
        expect(bob.locator("#typing")).to_have_text("")


@pytest.mark.e2e
def test_the_line_goes_a_while_after_alice_stops(two_users, serve):
    server = serve(STEP, TYPING_SHOWN=1)
    alice, bob = two_users
    open_chat(alice, server, "Alice")
    open_chat(bob, server, "Bob")
    with no_reload(bob):
        alice.get_by_label("Message").press_sequentially("h")
        expect(bob.locator("#typing")).to_have_text("Alice is typing…")
        # One second after her last key; Playwright gives it ten.
        expect(bob.locator("#typing")).to_have_text("", timeout=10_000)
