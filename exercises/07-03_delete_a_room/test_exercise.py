"""Exercise 07-03: the owner deletes a private room; its members' open sockets are taken out of
it at once, and its members page answers 404. Spoken by hand to the app made in this process:
what the handlers check is the point here, not the transport; then once in two browsers."""

import pytest
from playwright.sync_api import expect

from toolkit.pages import create_room_in, no_reload, sign_up_in_browser
from toolkit.people import (
    NO_SUCH_ROOM,
    OK,
    create_room,
    messages_until,
    post_form,
    rows,
    send_to,
    sign_up,
    texts_of,
    unique,
)


@pytest.fixture(scope="module")
def chat(in_process):
    return in_process("07_rooms_and_logins", SEND_RATE=0)


def delete(chat, person, room):
    """Press "Delete <room>", as the owner's members page has it (with a token of this session
    from the chat page: the others have no such button to press)."""
    return post_form(person.http, chat, f"/rooms/{room}/delete", "/")


def test_deleted_room_is_gone_for_its_members_open_sockets(chat, connect):
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    alice_socket = connect(chat, alice, rooms=[room, "general"])
    bob_socket = connect(chat, bob, rooms=[room, "general"])
    assert send_to(alice_socket, room, "before") == OK
    messages_until(bob_socket, "before")

    response = delete(chat, alice, room)
    assert response.url == f"{chat.url}/", f"{response.status_code}: {response.text[:300]}"
    assert bob_socket.next_event("room deleted") == {"room": room}
    assert rows(chat, "SELECT count(*) FROM rooms WHERE name = ?", room) == [(0,)]
    assert rows(chat, "SELECT count(*) FROM messages WHERE room = ?", room) == [(0,)]
    assert bob.http.get(f"{chat.url}/rooms/{room}/members").status_code == 404
    assert send_to(bob_socket, room, "anyone there?") == NO_SUCH_ROOM

    # Alice makes a room of the same name again, hers alone: Bob's socket, which was in the old
    # one, must hear none of it. (One socket, one queue: "secret" would come before "to all".)
    assert post_form(alice.http, chat, "/rooms", name=room).url == f"{chat.url}/?room={room}"
    assert alice_socket.call("join", {"room": room}) == OK
    assert send_to(alice_socket, room, "secret") == OK
    assert send_to(alice_socket, "general", "to all") == OK
    assert texts_of(messages_until(bob_socket, "to all")) == ["to all"]


def test_only_the_owner_may_delete_a_room(chat):
    alice, bob, carol = sign_up(chat), sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    assert delete(chat, bob, room).status_code == 403
    assert delete(chat, carol, room).status_code == 404
    assert rows(chat, "SELECT count(*) FROM members WHERE room = ?", room) == [(2,)]
    assert bob.http.get(f"{chat.url}/rooms/{room}/members").status_code == 200


@pytest.mark.e2e
def test_members_open_page_drops_the_deleted_room_without_a_reload(two_users, serve):
    alice, bob = two_users
    chat = serve("07_rooms_and_logins", SEND_RATE=0)
    sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    bob.goto(f"{chat.url}/?room={room}")
    expect(bob.locator(f"section[data-room='{room}'] .presence")).to_contain_text(bob_name)
    with no_reload(bob):
        alice.get_by_role("link", name="Members").click()
        alice.get_by_role("button", name=f"Delete {room}").click()
        expect(alice.get_by_text(f"{room} is deleted.")).to_be_visible()
        rooms = bob.get_by_role("navigation", name="Rooms")
        expect(rooms.get_by_role("link", name=room)).to_have_count(0)
        expect(bob.get_by_role("heading", name="general", exact=True)).to_be_visible()
