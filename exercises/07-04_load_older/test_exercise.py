"""Exercise 07-04: "Load older messages" asks for a room's messages before the first one its
log shows, and puts them in front, each once, in id order."""

import pytest
from playwright.sync_api import expect

from toolkit.launcher import chat_server
from toolkit.pages import (
    enter,
    expect_every_message_once_in_id_order,
    log,
    no_reload,
    shown_ids,
    sign_up_in_browser,
)
from toolkit.people import NO_SUCH_ROOM, OK, create_room, rows, send_to, sign_up


@pytest.mark.e2e
def test_a_room_of_150_shows_100_then_all_150_after_one_press(page, connect, tmp_path):
    with chat_server("07_rooms_and_logins", tmp_path, SEND_RATE=0) as chat:
        # 150 messages in "random", sent as a page sends them (stored, then broadcast).
        writer = connect(chat, sign_up(chat))
        for number in range(1, 151):
            assert send_to(writer, "random", f"message {number}") == OK
        stored = [row[0] for row in rows(chat, "SELECT id FROM messages WHERE room = 'random'")]

        sign_up_in_browser(page, chat)
        enter(page, "random")
        expect(log(page, "random").get_by_role("listitem")).to_have_count(100)
        assert shown_ids(page, "random") == stored[-100:]
        with no_reload(page):
            room = page.get_by_role("region", name="random")
            button = room.get_by_role("button", name="Load older messages")
            expect(button).to_be_visible()
            button.click()
            expect_every_message_once_in_id_order(chat, page, "random")
        expect(log(page, "random").get_by_role("listitem").first).to_contain_text("message 1")


def test_older_messages_of_a_private_room_are_for_its_members_only(in_process, connect):
    chat = in_process("07_rooms_and_logins", SEND_RATE=0)
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice)
    alice_socket = connect(chat, alice)
    assert send_to(alice_socket, room, "for alice only") == OK
    newest = rows(chat, "SELECT max(id) FROM messages")[0][0]

    answer = alice_socket.call("older", {"room": room, "before": newest + 1})
    assert [message["text"] for message in answer["messages"]] == ["for alice only"]
    bob_socket = connect(chat, bob)
    assert bob_socket.call("older", {"room": room, "before": newest + 1}) == NO_SUCH_ROOM
