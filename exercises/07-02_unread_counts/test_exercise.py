"""Exercise 07-02: each room's link counts the messages that came while another room was on
screen, as part of the link's name; entering the room clears its count."""

import re

import pytest
from playwright.sync_api import expect

from toolkit.pages import enter, log, no_reload, send_message, sign_up_in_browser
from toolkit.people import unique


def room_link(page, name):
    """The link to a room, whatever its name says after the room's own name."""
    rooms = page.get_by_role("navigation", name="Rooms")
    return rooms.get_by_role("link", name=re.compile(rf"^{re.escape(name)}\b"))


@pytest.mark.e2e
def test_messages_in_another_room_are_counted_on_its_link_until_it_is_entered(two_users, serve):
    alice, bob = two_users
    chat = serve("07_rooms_and_logins", SEND_RATE=0)
    sign_up_in_browser(alice, chat, unique("alice"))
    sign_up_in_browser(bob, chat, unique("bob"))
    with no_reload(bob):
        enter(alice, "random")
        send_message(alice, "one")
        expect(room_link(bob, "random")).to_have_accessible_name("random (1 unread)")
        send_message(alice, "two")
        expect(room_link(bob, "random")).to_have_accessible_name("random (2 unread)")

        # A message in the room on screen is read as it comes: no count.
        enter(alice, "general")
        send_message(alice, "in general")
        expect(log(bob, "general")).to_contain_text("in general")
        expect(room_link(bob, "general")).to_have_accessible_name("general")

        room_link(bob, "random").click()
        expect(room_link(bob, "random")).to_have_accessible_name("random")
        expect(log(bob, "random").get_by_role("listitem")).to_have_count(2)

        # Now random is on screen: its next message is not counted.
        enter(alice, "random")
        send_message(alice, "three")
        expect(log(bob, "random").get_by_role("listitem")).to_have_count(3)
        expect(room_link(bob, "random")).to_have_accessible_name("random")
        expect(room_link(bob, "general")).to_have_accessible_name("general")
