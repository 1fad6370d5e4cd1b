"""Steps 07 and 08: rooms. Who may hear what: public and private rooms, their members, the checks
in the socket handlers (a page is not what keeps a room private), presence. Every test runs on
both steps.

The browser tests run against `python app.py`; the forms and the Socket.IO contract, spoken by
hand as an attacker would, against the app made in this process (toolkit.inprocess).
"""

import re

import pytest
from playwright.sync_api import expect

from toolkit.launcher import chat_server
from toolkit.pages import (
    XSS,
    create_room_in,
    enter,
    log,
    no_reload,
    send_message,
    sign_up_in_browser,
)
from toolkit.people import (
    NO_SUCH_ROOM,
    OK,
    create_room,
    messages_until,
    post_form,
    presence_until,
    rows,
    send_to,
    session,
    sign_up,
    texts_of,
    unique,
    user_id,
)

STEPS = ["07_rooms_and_logins", "08_under_attack"]
NOT_A_MESSAGE = "That was not a chat message (it needs a room and a text, as text)."
NOT_A_JOIN = "That was not a join (it needs a room name as text)."


@pytest.fixture(scope="module", params=STEPS)
def chat(request, in_process):
    """The step's app in this process, with no rate limit (and step 08's limit on refused
    names lifted: every request here comes from one user or one address)."""
    return in_process(request.param, SEND_RATE=0, ACCOUNT_ATTEMPTS="1000/minute")


@pytest.fixture(scope="module", params=STEPS)
def server(request, tmp_path_factory):
    """`python app.py` of the step, for the browser."""
    with chat_server(request.param, tmp_path_factory.mktemp("server"), SEND_RATE=0) as running:
        yield running


# --- in the browser: two people, two browser contexts ---


@pytest.mark.e2e
def test_message_in_general_appears_for_alice_and_bob_and_not_in_random(two_users, server):
    alice, bob = two_users
    alice_name = sign_up_in_browser(alice, server, unique("alice"))
    sign_up_in_browser(bob, server, unique("bob"))
    with no_reload(alice), no_reload(bob):
        send_message(alice, "hello, general")
        for page in (alice, bob):
            expect(log(page, "general").get_by_role("listitem").last).to_have_text(
                re.compile(rf"^{alice_name} \d\d:\d\d hello, general$")
            )
        expect(alice.get_by_label("Message", exact=True)).to_have_value("")
        enter(bob, "random")
        send_message(bob, "hello, random")
        expect(log(bob, "random").get_by_role("listitem").last).to_have_text(
            re.compile("hello, random$")
        )
        expect(log(bob, "random")).not_to_contain_text("hello, general")


@pytest.mark.e2e
def test_xss_message_shows_as_text_and_nothing_runs(two_users, server):
    alice, bob = two_users
    dialogs = []
    for page in (alice, bob):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_up_in_browser(alice, server, unique("alice"))
    sign_up_in_browser(bob, server, unique("bob"))
    send_message(alice, XSS)
    for page in (alice, bob):
        expect(log(page, "general").get_by_role("listitem").last).to_have_text(
            re.compile(f"{re.escape(XSS)}$")
        )
        expect(log(page, "general").locator("img")).to_have_count(0)
    assert dialogs == []


@pytest.mark.e2e
def test_private_room_is_seen_by_its_members_and_refused_to_others(new_user, server):
    alice, bob, mallory = new_user(), new_user(), new_user()
    sign_up_in_browser(alice, server, unique("alice"))
    bob_name = sign_up_in_browser(bob, server, unique("bob"))
    sign_up_in_browser(mallory, server, unique("mallory"))
    room = create_room_in(alice, members=[bob_name])
    bob.reload()
    enter(bob, room)
    send_message(alice, "for members only")
    expect(log(bob, room)).to_contain_text("for members only")
    # Mallory has no link to the room. She joins it from her page's console: an error, and
    # her socket receives nothing from the room.
    rooms = mallory.get_by_role("navigation", name="Rooms")
    expect(rooms.get_by_role("link", name="general")).to_be_visible()
    expect(rooms.get_by_role("link", name=room)).to_have_count(0)
    mallory.evaluate("window.heard = []; socket.on('new message', (m) => heard.push(m.text))")
    answer = mallory.evaluate(
        "room => new Promise((done) => socket.emit('join', { room }, done))", room
    )
    assert answer == NO_SUCH_ROOM
    send_message(alice, "more for members")
    enter(alice, "general")
    send_message(alice, "for everyone")
    expect(log(mallory, "general")).to_contain_text("for everyone")
    assert mallory.evaluate("heard") == ["for everyone"]


@pytest.mark.e2e
def test_removed_member_stops_seeing_the_private_room_at_once(two_users, server):
    alice, bob = two_users
    sign_up_in_browser(alice, server, unique("alice"))
    bob_name = sign_up_in_browser(bob, server, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    bob.goto(f"{server.url}/?room={room}")
    expect(bob.locator(f"section[data-room='{room}'] .presence")).to_contain_text(bob_name)
    with no_reload(bob):
        alice.get_by_role("link", name="Members").click()
        alice.get_by_role("button", name=f"Remove {bob_name}").click()
        expect(alice.get_by_role("listitem").filter(has_text=bob_name)).to_have_count(0)
        alice.get_by_role("link", name=f"Back to {room}").click()
        send_message(alice, "bob has gone")
        enter(alice, "general")
        send_message(alice, "then to everyone")
        # One socket, one queue: had Bob still been in the room, its message would come first.
        enter(bob, "general")
        expect(log(bob, "general")).to_contain_text("then to everyone")
        enter(bob, room)
        expect(log(bob, room)).not_to_contain_text("bob has gone")
        bob.get_by_label("Message", exact=True).fill("am I still here?")
        bob.get_by_role("button", name="Send").click()
        expect(bob.get_by_role("alert")).to_have_text(NO_SUCH_ROOM["error"])


@pytest.mark.e2e
def test_presence_lists_who_is_in_the_room(two_users, server):
    alice, bob = two_users
    alice_name = sign_up_in_browser(alice, server, unique("alice"))
    bob_name = sign_up_in_browser(bob, server, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    bob.goto(f"{server.url}/?room={room}")
    presence = alice.locator(f"section[data-room='{room}'] .presence")
    with no_reload(alice):
        expect(presence).to_have_text(f"{alice_name}, {bob_name}")
        bob.close()
        expect(presence).to_have_text(alice_name)


# --- the pages and forms of rooms ---


def test_page_script_is_a_file_of_its_own_origin(chat):
    page = sign_up(chat).http.get(f"{chat.url}/").text
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all(' src="/static/' in script for script in scripts)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page), "inline script"
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "Name the room."),
        ("general", "That name is taken."),
        ("x" * 33, "A room name has 1 to 32 letters, digits"),
        ("<script>", "A room name has 1 to 32 letters, digits"),
    ],
)
def test_bad_room_name_is_answered_on_the_form(chat, name, error):
    alice = sign_up(chat)
    response = post_form(alice.http, chat, "/rooms", name=name)
    assert response.status_code == 400
    assert error in response.text
    assert rows(chat, "SELECT * FROM rooms WHERE owner_id = ?", user_id(chat, alice)) == []


def test_only_the_owner_manages_members_and_only_members_see_them(chat):
    alice, bob, mallory = sign_up(chat), sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    members_page = f"{chat.url}/rooms/{room}/members"
    assert mallory.http.get(members_page).status_code == 404
    assert session(chat).get(members_page).url.startswith(f"{chat.url}/login")
    assert (
        post_form(mallory.http, chat, f"/rooms/{room}/members", username=mallory.name).status_code
        == 404
    )
    assert (
        post_form(bob.http, chat, f"/rooms/{room}/members", username=mallory.name).status_code
        == 403
    )
    remove_alice = f"/rooms/{room}/members/{user_id(chat, alice)}/remove"
    assert post_form(bob.http, chat, remove_alice).status_code == 403
    assert post_form(alice.http, chat, remove_alice).status_code == 400  # the owner stays
    assert bob.http.get(members_page).status_code == 200
    again = post_form(alice.http, chat, f"/rooms/{room}/members", username=bob.name)
    assert again.status_code == 400
    assert f"{bob.name} is already a member." in again.text
    members = rows(chat, "SELECT user_id FROM members WHERE room = ? ORDER BY user_id", room)
    assert members == sorted([(user_id(chat, alice),), (user_id(chat, bob),)])


@pytest.mark.parametrize(
    ("username", "error"),
    [
        ("nobody-at-all", "There is no user called nobody-at-all."),
        ("", "Type a username."),
        ("x" * 33, "A username has at most 32 characters."),
    ],
)
def test_adding_someone_who_is_not_there_is_answered_on_the_form(chat, username, error):
    alice = sign_up(chat)
    room = create_room(chat, alice)
    response = post_form(alice.http, chat, f"/rooms/{room}/members", username=username)
    assert response.status_code == 400
    assert error in response.text
    assert rows(chat, "SELECT count(*) FROM members WHERE room = ?", room) == [(1,)]


# --- the Socket.IO contract, spoken by hand ---


def test_message_in_general_is_seen_by_everyone_in_general(chat, connect):
    alice, bob = sign_up(chat), sign_up(chat)
    alice_socket = connect(chat, alice, rooms=["general"])
    bob_socket = connect(chat, bob, rooms=["general"])
    assert send_to(alice_socket, "general", "  hello, general  ") == OK
    for socket in (alice_socket, bob_socket):
        (message,) = messages_until(socket, "hello, general")
        assert message["room"] == "general"
        assert message["name"] == alice.name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", message["time"])
    # Stored before it was broadcast: the id is the database's.
    stored = rows(chat, "SELECT room, text FROM messages WHERE id = ?", message["id"])
    assert stored == [("general", "hello, general")]


def test_message_in_general_is_not_seen_by_anyone_in_random(chat, connect):
    alice, carol = sign_up(chat), sign_up(chat)
    alice_socket = connect(chat, alice, rooms=["general", "random"])
    carol_socket = connect(chat, carol, rooms=["random"])
    assert send_to(alice_socket, "general", "for general only") == OK
    assert send_to(alice_socket, "random", "for random") == OK
    # Carol would have received the first before the second: one socket, one queue, in order.
    assert texts_of(messages_until(carol_socket, "for random")) == ["for random"]


def test_member_of_a_private_room_sees_its_messages(chat, connect):
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    alice_socket = connect(chat, alice, rooms=[room])
    bob_socket = connect(chat, bob, rooms=[room])
    assert send_to(alice_socket, room, "for members") == OK
    assert texts_of(messages_until(bob_socket, "for members")) == ["for members"]
    assert send_to(bob_socket, room, "members may answer") == OK
    assert messages_until(alice_socket, "members may answer")[-1]["name"] == bob.name


def test_non_member_who_tries_to_join_gets_an_error_and_sees_none_of_it(chat, connect):
    alice, mallory = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice)
    alice_socket = connect(chat, alice, rooms=[room, "general"])
    assert send_to(alice_socket, room, "said before") == OK
    mallory_socket = connect(chat, mallory, rooms=["general"], last_id=0)
    assert mallory_socket.call("join", {"room": room}) == NO_SUCH_ROOM
    assert send_to(alice_socket, room, "said after") == OK
    assert send_to(alice_socket, "general", "to everyone") == OK
    seen = messages_until(mallory_socket, "to everyone")  # general's history, then this
    assert [message for message in seen if message["room"] == room] == []


def test_non_member_cannot_send_to_a_private_room_and_nothing_is_stored(chat, connect):
    alice, mallory = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice)
    alice_socket = connect(chat, alice, rooms=[room])
    mallory_socket = connect(chat, mallory)
    assert send_to(mallory_socket, room, "let me in") == NO_SUCH_ROOM
    assert send_to(alice_socket, room, "still private") == OK
    assert texts_of(messages_until(alice_socket, "still private")) == ["still private"]
    assert rows(chat, "SELECT * FROM messages WHERE text = 'let me in'") == []


def test_a_room_that_does_not_exist_is_refused_like_a_private_one(chat, connect):
    mallory_socket = connect(chat, sign_up(chat))
    assert mallory_socket.call("join", {"room": "no-such-room"}) == NO_SUCH_ROOM
    assert send_to(mallory_socket, "no-such-room", "hello?") == NO_SUCH_ROOM


@pytest.mark.parametrize(
    ("event", "payload", "answer"),
    [
        ("send message", {"room": "general", "text": ""}, "Type a message before you send it."),
        (
            "send message",
            {"room": "general", "text": " \n\t"},
            "Type a message before you send it.",
        ),
        (
            "send message",
            {"room": "general", "text": "x" * 501},
            "A message has at most 500 characters; yours has 501.",
        ),
        ("send message", {"room": "general", "text": 42}, NOT_A_MESSAGE),
        ("send message", {"room": ["general"], "text": "hi"}, NOT_A_MESSAGE),
        ("send message", {"text": "hi"}, NOT_A_MESSAGE),
        ("send message", "just a string", NOT_A_MESSAGE),
        ("join", {"room": 7}, NOT_A_JOIN),
        ("join", "general", NOT_A_JOIN),
        ("join", None, NOT_A_JOIN),
    ],
)
def test_bad_events_are_answered_to_the_sender_and_nothing_is_broadcast(
    chat, connect, event, payload, answer
):
    alice, bob = sign_up(chat), sign_up(chat)
    alice_socket = connect(chat, alice, rooms=["general"])
    bob_socket = connect(chat, bob, rooms=["general"])
    assert alice_socket.call(event, payload) == {"error": answer}
    assert send_to(alice_socket, "general", "x" * 500) == OK  # exactly 500 characters is fine
    assert texts_of(messages_until(bob_socket, "x" * 500)) == ["x" * 500]


def test_removing_a_member_takes_their_sockets_out_of_the_room_at_once(chat, connect):
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    alice_socket = connect(chat, alice, rooms=[room, "general"])
    bob_tabs = [connect(chat, bob, rooms=[room, "general"]) for _ in range(2)]
    post_form(alice.http, chat, f"/rooms/{room}/members/{user_id(chat, bob)}/remove")
    assert send_to(alice_socket, room, "after bob left") == OK
    assert send_to(alice_socket, "general", "to everyone") == OK
    for tab in bob_tabs:
        assert texts_of(messages_until(tab, "to everyone")) == ["to everyone"]
    assert bob_tabs[0].call("join", {"room": room}) == NO_SUCH_ROOM
    assert send_to(bob_tabs[1], room, "can I still talk?") == NO_SUCH_ROOM


# --- presence, coalesced ---


def test_twenty_joins_at_once_cost_a_few_presence_broadcasts_not_twenty(chat, connect):
    owner, bob, carol = (sign_up(chat, unique(prefix)) for prefix in "abc")  # names in order
    room = create_room(chat, owner, members=[bob, carol])
    observer = connect(chat, owner, rooms=[room])
    presence_until(observer, room, [owner.name])
    tabs = [connect(chat, person) for person in (bob, carol) for _ in range(10)]
    for tab in tabs:
        tab.emit("join", {"room": room}, ack=True)
    joined = presence_until(observer, room, [owner.name, bob.name, carol.name])
    assert len(joined) <= 5, joined
    for tab in tabs[:10]:  # Bob's ten tabs close
        tab.close()
    left = presence_until(observer, room, [owner.name, carol.name])
    # A broadcast may go out every 0.2 s while they close: still fewer than one per tab.
    assert len(left) < 10, left
