"""Step 08's defences of its rooms, each attacked as its README's table says: membership forced on
someone (rooms without end, and no way out), and names of rooms and people probed. Step 07 has
none of them: notebooks/08_under_attack shows each attack working there.

The app runs in this process (toolkit.inprocess); the Leave button, in a browser against
`python app.py`.
"""

import pytest
from playwright.sync_api import expect

from toolkit.launcher import chat_server
from toolkit.pages import create_room_in, sign_up_in_browser
from toolkit.people import (
    OK,
    create_room,
    messages_until,
    post_form,
    send_to,
    sign_up,
    texts_of,
    unique,
)

STEP = "08_under_attack"


@pytest.fixture(scope="module")
def chat(in_process):
    """The step in this process: no rate limit, sign-ins not limited, a room has at most 5
    members."""
    return in_process(STEP, SEND_RATE=0, ACCOUNT_ATTEMPTS="1000/minute", MAX_MEMBERS=5)


@pytest.mark.e2e
def test_a_member_leaves_a_private_room_with_its_leave_button(two_users, tmp_path):
    alice, bob = two_users
    with chat_server(STEP, tmp_path, SEND_RATE=0) as server:
        sign_up_in_browser(alice, server, unique("alice"))
        bob_name = sign_up_in_browser(bob, server, unique("bob"))
        room = create_room_in(alice, members=[bob_name])
        alice.get_by_role("link", name="Members").click()
        expect(alice.get_by_role("button", name="Leave")).to_have_count(0)  # the owner stays
        bob.goto(f"{server.url}/?room={room}")
        bob.get_by_role("link", name="Members").click()
        bob.get_by_role("button", name="Leave").click()
        expect(bob.locator("#status")).to_have_text("connected")
        rooms = bob.get_by_role("navigation", name="Rooms")
        expect(rooms.get_by_role("link", name="general", exact=True)).to_be_visible()
        expect(rooms.get_by_role("link", name=room, exact=True)).to_have_count(0)


def test_a_member_who_leaves_is_taken_out_of_the_room_in_every_tab_at_once(chat, connect):
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    alice_socket = connect(chat, alice, rooms=[room, "general"])
    bob_tabs = [connect(chat, bob, rooms=[room, "general"]) for _ in range(2)]
    members_page = f"/rooms/{room}/members"
    assert post_form(bob.http, chat, f"/rooms/{room}/leave", members_page).url == f"{chat.url}/"
    assert send_to(alice_socket, room, "after bob left") == OK
    assert send_to(alice_socket, "general", "to everyone") == OK
    for tab in bob_tabs:
        assert texts_of(messages_until(tab, "to everyone")) == ["to everyone"]
    assert bob.http.get(f"{chat.url}{members_page}").status_code == 404
    owner_leaves = post_form(alice.http, chat, f"/rooms/{room}/leave", members_page)
    assert owner_leaves.status_code == 400
    assert "The owner stays in the room." in owner_leaves.text


def test_an_owner_has_at_most_20_rooms_and_a_room_at_most_5_members_here(chat):
    owner = sign_up(chat)
    rooms = [create_room(chat, owner) for _ in range(20)]
    one_more = post_form(owner.http, chat, "/rooms", "/", name=unique("more"))
    assert one_more.status_code == 400
    assert "You own 20 rooms: that is the most." in one_more.text
    for _ in range(4):  # the owner is the first member
        added = post_form(
            owner.http, chat, f"/rooms/{rooms[0]}/members", username=sign_up(chat).name
        )
        assert added.status_code == 200
    sixth = sign_up(chat).name
    refused = post_form(owner.http, chat, f"/rooms/{rooms[0]}/members", username=sixth)
    assert refused.status_code == 400
    assert "A room has at most 5 members." in refused.text


def test_names_of_rooms_and_people_can_be_guessed_ten_times_a_minute_at_most(in_process):
    # "That name is taken" tells that a private room exists, "There is no user called" that an
    # account does not: refused answers of both forms count together, per user.
    guarded = in_process(STEP)  # the step's default limit: 10 refused names a minute
    owner, guesser = sign_up(guarded), sign_up(guarded)
    secret, own = create_room(guarded, owner), create_room(guarded, guesser)
    members = f"/rooms/{own}/members"
    answers = [post_form(guesser.http, guarded, "/rooms", "/", name=secret) for _ in range(5)]
    answers += [
        post_form(guesser.http, guarded, members, members, username=unique("who")) for _ in range(6)
    ]
    assert [answer.status_code for answer in answers] == [400] * 10 + [429]
    assert "That name is taken." in answers[0].text
    assert "There is no user called" in answers[5].text
    # The others guess on: the owner is told the name is taken.
    assert post_form(owner.http, guarded, "/rooms", "/", name=secret).status_code == 400
