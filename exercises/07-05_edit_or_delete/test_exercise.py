"""Exercise 07-05: people edit or delete their own messages, and every page shows the change in
place. The check that it is your own message is in the socket handler: tried with raw sockets
against the app made in this process; the pages in two browsers."""

import re

import pytest
from playwright.sync_api import expect

from toolkit.launcher import chat_server
from toolkit.pages import log, no_reload, send_message, shown_ids, sign_up_in_browser
from toolkit.people import OK, messages_until, rows, send_to, sign_up, unique

NOT_YOURS = re.compile("own messages")


@pytest.mark.e2e
def test_an_edit_and_a_deletion_show_in_place_on_both_pages(two_users, tmp_path):
    alice, bob = two_users
    with chat_server("07_rooms_and_logins", tmp_path, SEND_RATE=0) as chat:
        sign_up_in_browser(alice, chat, unique("alice"))
        sign_up_in_browser(bob, chat, unique("bob"))
        send_message(alice, "helo, bob")
        send_message(bob, "hi alice")
        for page in (alice, bob):
            expect(log(page, "general").get_by_role("listitem")).to_have_count(2)
        first, second = shown_ids(bob, "general")
        with no_reload(alice), no_reload(bob):
            mine = alice.locator(f"#message-{first}")
            expect(mine.get_by_role("button", name="Delete")).to_be_visible()
            # Bob's message on Alice's page, and hers on his: no buttons.
            expect(alice.locator(f"#message-{second}").get_by_role("button")).to_have_count(0)
            expect(bob.locator(f"#message-{first}").get_by_role("button")).to_have_count(0)

            mine.get_by_role("button", name="Edit").click()
            alice.get_by_role("textbox", name="Edit message").fill("hello, bob")
            alice.get_by_role("button", name="Save").click()
            for page in (alice, bob):
                expect(page.locator(f"#message-{first}")).to_contain_text("hello, bob")
                assert shown_ids(page, "general") == [first, second]  # in place, not appended
            assert rows(chat, "SELECT text FROM messages WHERE id = ?", first) == [("hello, bob",)]

            alice.locator(f"#message-{first}").get_by_role("button", name="Delete").click()
            for page in (alice, bob):
                expect(page.locator(f"#message-{first}")).to_have_count(0)
                assert shown_ids(page, "general") == [second]
            assert rows(chat, "SELECT count(*) FROM messages WHERE id = ?", first) == [(0,)]


def test_no_one_may_edit_or_delete_a_message_of_someone_else(in_process, connect):
    chat = in_process("07_rooms_and_logins", SEND_RATE=0)
    alice, bob = sign_up(chat), sign_up(chat)
    alice_socket = connect(chat, alice, rooms=["general"])
    bob_socket = connect(chat, bob, rooms=["general"])
    assert send_to(alice_socket, "general", "mine") == OK
    message_id = messages_until(bob_socket, "mine")[-1]["id"]

    edited = bob_socket.call("edit message", {"id": message_id, "text": "yours now"})
    assert NOT_YOURS.search(edited["error"]), edited
    deleted = bob_socket.call("delete message", {"id": message_id})
    assert NOT_YOURS.search(deleted["error"]), deleted
    assert rows(chat, "SELECT text FROM messages WHERE id = ?", message_id) == [("mine",)]

    # Alice may; Bob's socket hears the change. Nothing came before it from Bob's attempts.
    assert alice_socket.call("edit message", {"id": message_id, "text": "still mine"}) == OK
    name, data = bob_socket.event()
    assert (name, data["id"], data["text"]) == ("message changed", message_id, "still mine")
    assert alice_socket.call("delete message", {"id": message_id}) == OK
    assert bob_socket.event() == ("message deleted", {"id": message_id, "room": "general"})
