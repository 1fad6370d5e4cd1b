"""Exercise 07-01: a member added to a private room sees it on their open page at once."""

import pytest
from playwright.sync_api import expect

from toolkit.pages import create_room_in, enter, log, no_reload, send_message, sign_up_in_browser
from toolkit.people import unique


@pytest.mark.e2e
def test_a_member_added_to_a_room_sees_it_and_hears_it_without_a_reload(two_users, serve):
    alice, bob = two_users
    chat = serve("07_rooms_and_logins", SEND_RATE=0)
    sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    with no_reload(bob):
        room = create_room_in(alice, members=[bob_name])
        rooms = bob.get_by_role("navigation", name="Rooms")
        expect(rooms.get_by_role("link", name=room, exact=True)).to_be_visible()
        send_message(alice, "welcome, bob")
        enter(bob, room)
        expect(log(bob, room)).to_contain_text("welcome, bob")
        expect(bob.locator(f"section[data-room='{room}'] .presence")).to_contain_text(bob_name)
