"""Step 07: accounts, rooms, authorization in the socket handlers, catch-up after a reconnect.

Against `python app.py`, in tiers: two people in two browser contexts; then, without a browser,
the forms over plain HTTP (requests), and the Socket.IO contract spoken by hand (as an attacker
would) and by python-socketio's client.
"""

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest
import requests
import socketio
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from playwright.sync_api import expect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as open_websocket

from toolkit.clients import (
    QUEUE,
    SocketIOByHand,
    cut_by_server,
    engine_io_url,
    frames_to_fill_the_kernel_buffers,
    masked_frame,
    tiny_buffer_socket,
    websocket_by_hand,
)
from toolkit.launcher import StepServer, step_folder, wait_until
from toolkit.pages import (
    RECONNECT_TIMEOUT,
    XSS,
    create_room_in,
    enter,
    log,
    no_reload,
    send_message,
    sign_in_in_browser,
    sign_out_in_browser,
    sign_up_in_browser,
)
from toolkit.people import (
    OK,
    PASSWORD,
    FromAddress,
    create_room,
    csrf_token,
    messages_until,
    post_form,
    presence_until,
    rows,
    send_to,
    sign_in,
    sign_out,
    sign_up,
    texts_of,
    unique,
    user_id,
)

STEP = "07_rooms_and_logins"
NO_SUCH_ROOM = {"error": "There is no room by that name that you may enter."}
REFUSED = '44{"message":"You are not signed in: sign in again."}'  # Socket.IO's connect error
NOT_A_MESSAGE = "That was not a chat message (it needs a room and a text, as text)."
NOT_A_JOIN = "That was not a join (it needs a room name as text)."


def start_server(folder, **env):
    server = StepServer(STEP, folder, INSTANCE_PATH=folder / "instance", **env)
    server.database = folder / "instance" / "chat.sqlite"
    return server


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """The step with a fresh database and no rate limit, shared by the tests that stop nothing.
    A connection that has not signed in is closed after 1 s; sign-ins are not limited; a room
    has at most 5 members."""
    folder = tmp_path_factory.mktemp("chat")
    settings = {"SIGN_IN_TIME": 1, "ACCOUNT_ATTEMPTS": "1000/minute", "MAX_MEMBERS": 5}
    with start_server(folder, SEND_RATE=0, **settings) as server:
        yield server


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """The step with a rate limit: 10 messages at once, then 1 a second (per user)."""
    with start_server(tmp_path_factory.mktemp("limited"), SEND_BURST=10, SEND_RATE=1) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The step with its default limit on refused sign-ins and sign-ups: 10 a minute."""
    with start_server(tmp_path_factory.mktemp("guarded")) as server:
        yield server


@pytest.fixture(scope="module")
def taken(chat):
    """An account called "taken", for the tests of refused sign-ups and sign-ins."""
    return sign_up(chat, "taken")


# --- helpers: the database, sockets, pages ---


def attempt(server, address, path, username, password):
    """One sign-in or sign-up from `address`: the answer's status code."""
    http = requests.Session()
    http.mount("http://", FromAddress(address))
    fields = {"username": username, "password": password}
    return post_form(http, server, path, form_page=path, **fields).status_code


def accounts_and_rooms(server):
    return [
        rows(server, f"SELECT * FROM {table}") for table in ("users", "logins", "rooms", "members")
    ]


def shown_ids(page, room):
    return page.locator(f"section[data-room='{room}'] li").evaluate_all(
        "items => items.map((item) => Number(item.dataset.id))"
    )


def expect_every_message_once_in_id_order(server, page, room):
    """The page's log holds exactly the room's messages in the database, in id order."""
    stored = [row[0] for row in rows(server, "SELECT id FROM messages WHERE room = ?", room)]
    expect(log(page, room).get_by_role("listitem")).to_have_count(len(stored))
    assert shown_ids(page, room) == stored


# --- in the browser: two people, two browser contexts ---


@pytest.mark.e2e
def test_sign_up_sign_out_and_sign_in_again_in_the_browser(page, chat):
    name = sign_up_in_browser(page, chat, unique("alice"))
    expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
    sign_out_in_browser(page)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    expect(page.get_by_label("Username")).to_have_value(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#status")).to_have_text("connected")


@pytest.mark.e2e
def test_taken_username_is_answered_on_the_sign_up_form(page, chat):
    taken = sign_up(chat).name
    page.goto(f"{chat.url}/signup")
    page.get_by_label("Username").fill(taken.upper())
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text("That username is taken.")).to_be_visible()
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")


@pytest.mark.e2e
def test_message_in_general_appears_for_alice_and_bob_and_not_in_random(two_users, chat):
    alice, bob = two_users
    alice_name = sign_up_in_browser(alice, chat, unique("alice"))
    sign_up_in_browser(bob, chat, unique("bob"))
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
def test_xss_message_shows_as_text_and_nothing_runs(two_users, chat):
    alice, bob = two_users
    dialogs = []
    for page in (alice, bob):
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    sign_up_in_browser(alice, chat, unique("alice"))
    sign_up_in_browser(bob, chat, unique("bob"))
    send_message(alice, XSS)
    for page in (alice, bob):
        expect(log(page, "general").get_by_role("listitem").last).to_have_text(
            re.compile(f"{re.escape(XSS)}$")
        )
        expect(log(page, "general").locator("img")).to_have_count(0)
    assert dialogs == []


@pytest.mark.e2e
def test_private_room_is_seen_by_its_members_and_refused_to_others(new_user, chat):
    alice, bob, mallory = new_user(), new_user(), new_user()
    sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    sign_up_in_browser(mallory, chat, unique("mallory"))
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
def test_removed_member_stops_seeing_the_private_room_at_once(two_users, chat):
    alice, bob = two_users
    sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    bob.goto(f"{chat.url}/?room={room}")
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
def test_a_member_leaves_a_private_room_with_its_leave_button(two_users, chat):
    alice, bob = two_users
    sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    alice.get_by_role("link", name="Members").click()
    expect(alice.get_by_role("button", name="Leave")).to_have_count(0)  # the owner stays
    bob.goto(f"{chat.url}/?room={room}")
    bob.get_by_role("link", name="Members").click()
    bob.get_by_role("button", name="Leave").click()
    expect(bob.locator("#status")).to_have_text("connected")
    rooms = bob.get_by_role("navigation", name="Rooms")
    expect(rooms.get_by_role("link", name="general", exact=True)).to_be_visible()
    expect(rooms.get_by_role("link", name=room, exact=True)).to_have_count(0)


@pytest.mark.e2e
def test_presence_lists_who_is_in_the_room(two_users, chat):
    alice, bob = two_users
    alice_name = sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    bob.goto(f"{chat.url}/?room={room}")
    presence = alice.locator(f"section[data-room='{room}'] .presence")
    with no_reload(alice):
        expect(presence).to_have_text(f"{alice_name}, {bob_name}")
        bob.close()
        expect(presence).to_have_text(alice_name)


@pytest.mark.e2e
def test_sign_out_in_one_tab_signs_out_every_tab(new_user, chat):
    first = new_user()
    second = first.context.new_page()  # a second tab: same browser, same cookie
    name = sign_up_in_browser(first, chat, unique("alice"))
    second.goto(chat.url)
    expect(second.locator("#status")).to_have_text("connected")
    elsewhere = new_user()  # Alice in another browser
    sign_in_in_browser(elsewhere, chat, name)
    with no_reload(second):
        sign_out_in_browser(first)
        expect(second.locator("#status")).to_have_text("signed out")
        expect(second.get_by_role("alert")).to_have_text("You are signed out: sign in again.")
    expect(elsewhere.locator("#status")).to_have_text("connected")
    send_message(elsewhere, "still here")
    expect(log(elsewhere, "general")).to_contain_text("still here")
    second.get_by_role("link", name="sign in again").click()
    expect(second.get_by_role("heading", name="Sign in")).to_be_visible()


@pytest.mark.e2e
def test_page_whose_session_is_gone_says_sign_in_again(page, chat):
    sign_up_in_browser(page, chat, unique("alice"))
    page.context.clear_cookies()  # the session ends while the page is open
    with no_reload(page):
        page.context.set_offline(True)  # the connection drops; it comes back without a cookie
        expect(page.locator("#status")).to_have_text("disconnected")
        page.context.set_offline(False)
        expect(page.get_by_role("alert")).to_have_text(
            "You are signed out: sign in again.", timeout=RECONNECT_TIMEOUT
        )


@pytest.mark.e2e
def test_page_with_twenty_rooms_joins_them_all_even_over_long_polling(page, chat):
    alice = sign_up(chat)
    rooms = [create_room(chat, alice) for _ in range(20)]
    cookie = {"name": "session", "value": alice.http.cookies["session"], "url": chat.url}
    page.context.add_cookies([cookie])
    # Long-polling carries every packet a page emits at once in one request, and the server
    # takes at most 16 in one: the page joins its 22 rooms one after the other.
    page.route_web_socket(re.compile(r"/socket\.io/"), lambda ws: ws.close())
    page.goto(chat.url)
    # Each room answers its join with a presence broadcast; all 22 list Alice (general and random
    # may list people of other tests too). One round trip per join over long-polling: seconds on
    # a loaded machine.
    expect(page.locator(".presence")).to_contain_text(
        [alice.name] * (len(rooms) + 2), timeout=RECONNECT_TIMEOUT
    )
    expect(page.get_by_role("alert")).to_have_text("")


@pytest.mark.e2e
def test_chat_works_over_long_polling_when_websockets_are_blocked(two_users, chat):
    alice, bob = two_users
    alice.route_web_socket(re.compile(r"/socket\.io/"), lambda ws: ws.close())
    sign_up_in_browser(alice, chat, unique("alice"))
    sign_up_in_browser(bob, chat, unique("bob"))
    send_message(alice, "sent by polling")
    expect(log(bob, "general")).to_contain_text("sent by polling")
    assert alice.evaluate("socket.io.engine.transport.name") == "polling"


# --- in the browser: nothing lost, nothing twice ---


@pytest.mark.e2e
def test_dropped_connection_loses_nothing_and_doubles_nothing(two_users, chat):
    alice, bob = two_users
    sign_up_in_browser(alice, chat, unique("alice"))
    bob_name = sign_up_in_browser(bob, chat, unique("bob"))
    room = create_room_in(alice, members=[bob_name])
    bob.goto(f"{chat.url}/?room={room}")
    send_message(alice, "before the drop")
    expect(log(bob, room)).to_contain_text("before the drop")
    with no_reload(bob):
        bob.context.set_offline(True)
        expect(bob.locator("#status")).to_have_text("disconnected")
        for n in range(3):
            send_message(alice, f"while bob was away {n}")
        bob.context.set_offline(False)
        expect(bob.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
        send_message(alice, "after bob came back")
        expect(log(bob, room)).to_contain_text("after bob came back")
        for page in (alice, bob):
            expect_every_message_once_in_id_order(chat, page, room)


@pytest.mark.e2e
def test_page_moves_its_bookmark_only_when_every_room_has_answered(page, chat, connect):
    alice = sign_up(chat)
    room = create_room(chat, alice)
    alice_socket = connect(chat, alice)
    for n in range(3):
        assert send_to(alice_socket, room, f"message {n}") == OK
    page.context.add_cookies(
        [{"name": "session", "value": alice.http.cookies["session"], "url": chat.url}]
    )
    # Long-polling only, so that every frame from the server passes through page.route, which
    # loses the answer to the page's last join (its rooms: general, random, then Alice's).
    page.route_web_socket(re.compile(r"/socket\.io/"), lambda ws: ws.close())
    lost = []

    def lose_last_join_answer(route):
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        frames = response.text().split("\x1e")
        kept = [frame for frame in frames if not frame.startswith("432[")]
        lost.extend(frame for frame in frames if frame not in kept)
        route.fulfill(response=response, body="\x1e".join(kept))

    page.route(re.compile(r"/socket\.io/\?EIO=4&transport=polling"), lose_last_join_answer)
    page.goto(f"{chat.url}/?room={room}")
    expect(log(page, room).get_by_role("listitem")).to_have_count(3)
    if not lost:  # route handlers run only while the test waits in a Playwright call
        page.wait_for_event("requestfinished", predicate=lambda request: bool(lost))
    # Everything is shown, but one room has not answered: the bookmark stays where it was.
    assert page.evaluate("[bookmark, newest > 0]") == [0, True]
    page.unroute_all(behavior="ignoreErrors")  # a long poll may still be in its handler
    with no_reload(page):
        page.context.set_offline(True)
        expect(page.locator("#status")).to_have_text("disconnected")
        page.context.set_offline(False)
        expect(page.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
        # From bookmark 0, every room sends its history again: each id is shown once.
        # Not wait_for_function: its polling evaluates a string, which the page's CSP forbids.
        page.evaluate(
            """() => new Promise((caughtUp) => {
              const check = () => (bookmark === newest ? caughtUp() : setTimeout(check, 50));
              check();
            })"""
        )
    for shown in ("general", "random", room):
        ids = shown_ids(page, shown)
        assert ids == sorted(set(ids)), shown
    expect_every_message_once_in_id_order(chat, page, room)


@pytest.mark.e2e
def test_server_restart_loses_nothing_doubles_nothing_and_keeps_history(new_user, tmp_path):
    with start_server(tmp_path) as server:
        alice, bob = new_user(), new_user()
        sign_up_in_browser(alice, server, "alice")
        sign_up_in_browser(bob, server, "bob")
        send_message(alice, "before the restart")
        send_message(bob, "me too")
        expect(log(alice, "general").get_by_role("listitem")).to_have_count(2)
        with no_reload(alice), no_reload(bob):
            server.stop()
            for page in (alice, bob):
                expect(page.locator("#status")).to_have_text("disconnected")
            bob.context.set_offline(True)  # Bob stays away a little longer
            server.start()
            expect(alice.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
            for n in range(3):
                send_message(alice, f"after the restart {n}")
            bob.context.set_offline(False)
            expect(bob.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
            send_message(bob, "back")
            for page in (alice, bob):
                expect_every_message_once_in_id_order(server, page, "general")
        # A page opened now shows the history, from the database.
        carol = new_user()
        sign_up_in_browser(carol, server, "carol")
        expect_every_message_once_in_id_order(server, carol, "general")
        expect(log(carol, "general").get_by_role("listitem").first).to_have_text(
            re.compile("^alice .* before the restart$")
        )


# --- fast tier: the forms over plain HTTP ---


def test_signing_up_signs_you_in_and_the_chat_page_greets_you(chat):
    alice = sign_up(chat)
    (cookie,) = [cookie for cookie in alice.http.cookies if cookie.name == "session"]
    assert cookie.has_nonstandard_attr("HttpOnly")  # no script can read it
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    page = alice.http.get(f"{chat.url}/").text
    assert f"Signed in as <b>{alice.name}</b>" in page
    # Only a hash of the password is stored.
    (stored,) = rows(chat, "SELECT password_hash FROM users WHERE name = ?", alice.name)
    assert PASSWORD not in stored[0]


def test_the_chat_page_needs_a_sign_in(chat):
    response = requests.get(f"{chat.url}/")
    assert response.url == f"{chat.url}/login?next=%2F"
    assert "Sign in to chat." in response.text
    # A form with its CSRF token, posted without a sign-in, goes the same way.
    response = post_form(requests.Session(), chat, "/rooms", name=unique("room"))
    assert response.url == f"{chat.url}/login?next=%2Frooms"


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        ("", PASSWORD, "Choose a username."),
        ("   ", PASSWORD, "Choose a username."),
        ("new-person", "", "Choose a password."),
        ("x" * 33, PASSWORD, "A username has 1 to 32 letters, digits"),
        ("<b>bob</b>", PASSWORD, "A username has 1 to 32 letters, digits"),
        ("new-person", "short", "A password has 8 to 100 characters."),
        ("new-person", "x" * 101, "A password has 8 to 100 characters."),
        ("taken", PASSWORD, "That username is taken."),
        ("TAKEN", PASSWORD, "That username is taken."),
    ],
)
def test_bad_sign_up_is_answered_on_the_form_and_changes_nothing(
    chat, taken, username, password, error
):
    users = rows(chat, "SELECT * FROM users")
    http = requests.Session()
    response = post_form(http, chat, "/signup", username=username, password=password)
    assert response.status_code == 400
    assert error in response.text
    assert rows(chat, "SELECT * FROM users") == users
    assert http.get(f"{chat.url}/").url.startswith(f"{chat.url}/login")  # not signed in


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        ("taken", "wrong password", "Wrong username or password."),
        ("nobody-at-all", PASSWORD, "Wrong username or password."),
        ("", PASSWORD, "Type your username."),
        ("taken", "", "Type your password."),
        ("x" * 33, PASSWORD, "A username has at most 32 characters."),
        ("taken", "x" * 101, "A password has at most 100 characters."),
    ],
)
def test_bad_sign_in_is_answered_on_the_form_and_signs_no_one_in(
    chat, taken, username, password, error
):
    logins = rows(chat, "SELECT * FROM logins")
    http = requests.Session()
    response = post_form(http, chat, "/login", username=username, password=password)
    assert response.status_code == 400
    assert error in response.text
    assert rows(chat, "SELECT * FROM logins") == logins


def test_every_form_needs_its_csrf_token(chat):
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    for path, fields in [
        ("/signup", {"username": unique("user"), "password": PASSWORD}),
        ("/login", {"username": alice.name, "password": PASSWORD}),
        ("/rooms", {"name": unique("room")}),
        (f"/rooms/{room}/members", {"username": sign_up(chat).name}),
        (f"/rooms/{room}/members/{user_id(chat, bob)}/remove", {}),
        ("/logout", {}),
    ]:
        before = accounts_and_rooms(chat)
        response = alice.http.post(f"{chat.url}{path}", data=fields)
        assert response.status_code == 400, path
        assert "The CSRF token is missing." in response.text
        assert accounts_and_rooms(chat) == before, path
    assert alice.http.get(f"{chat.url}/").url == f"{chat.url}/"  # still signed in


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
    assert requests.get(members_page).url.startswith(f"{chat.url}/login")
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


def test_page_script_is_a_file_of_its_own_origin(chat):
    page = sign_up(chat).http.get(f"{chat.url}/").text
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all(' src="/static/' in script for script in scripts)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page), "inline script"
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"


# --- fast tier: the Socket.IO contract, spoken by hand ---


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


def test_a_python_socketio_client_speaks_the_same_contract(chat):
    alice, bob = sign_up(chat), sign_up(chat)
    clients = [socketio.SimpleClient(), socketio.SimpleClient()]
    try:
        for client, person in zip(clients, (alice, bob), strict=True):
            client.connect(chat.url, headers={"Cookie": person.cookie}, auth={"last_id": 10**9})
            assert client.call("join", {"room": "random"}, timeout=5) == OK
        answer = clients[0].call("send message", {"room": "random", "text": "hi"}, timeout=5)
        assert answer == OK
        while (event := clients[1].receive(timeout=5))[0] != "new message":
            pass
        assert event[1]["name"] == alice.name
        assert event[1]["text"] == "hi"
    finally:
        # disconnect() says goodbye at once, then waits 3 s for a close frame that
        # python-engineio's own reader thread has already taken: let it wait elsewhere.
        for client in clients:
            threading.Thread(target=client.disconnect, daemon=True).start()


def test_a_socket_receives_what_it_missed_after_last_id_then_live_messages(chat, connect):
    alice, bob = sign_up(chat), sign_up(chat)
    room = create_room(chat, alice, members=[bob])
    alice_socket = connect(chat, alice, rooms=[room])
    for text in ["one", "two", "three", "four"]:
        assert send_to(alice_socket, room, text) == OK
    ids = [message["id"] for message in messages_until(alice_socket, "four")]
    assert ids == sorted(ids)
    # Bob's page had shown "two": it connects with that id and is sent "three" and "four".
    bob_socket = connect(chat, bob, rooms=[room], last_id=ids[1])
    assert send_to(alice_socket, room, "five") == OK
    missed = messages_until(bob_socket, "five")
    assert texts_of(missed) == ["three", "four", "five"]
    assert [message["id"] for message in missed][:2] == ids[2:]
    # Joining again on the same connection sends nothing twice.
    assert bob_socket.call("join", {"room": room}) == OK
    assert send_to(alice_socket, room, "six") == OK
    assert texts_of(messages_until(bob_socket, "six")) == ["six"]


def test_a_new_page_gets_the_newest_100_messages_of_a_room(chat, connect):
    alice = sign_up(chat)
    room = create_room(chat, alice)
    alice_socket = connect(chat, alice)
    for n in range(105):
        last = alice_socket.emit("send message", {"room": room, "text": f"message {n}"}, ack=True)
    assert alice_socket.answer_to(last) == OK  # acknowledged in order: all 105 are stored
    history = messages_until(connect(chat, alice, rooms=[room], last_id=0), "message 104")
    assert texts_of(history) == [f"message {n}" for n in range(5, 105)]


def test_socket_without_a_signed_in_session_is_refused_in_connect(chat):
    assert SocketIOByHand(chat).answer == REFUSED


@pytest.mark.parametrize(
    "auth", [{"last_id": "7"}, {"last_id": -1}, {"last_id": True}, {"last_id": 2**63}]
)
def test_a_last_id_that_is_not_a_whole_number_is_refused(chat, auth):
    answer = SocketIOByHand(chat, sign_up(chat).cookie, auth).answer
    assert answer == '44{"message":"auth.last_id must be a whole number, 0 or more."}'


def test_socket_with_a_forged_or_signed_out_cookie_is_refused(chat):
    alice = sign_up(chat)
    cookie = alice.cookie
    forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert SocketIOByHand(chat, forged).answer == REFUSED
    assert SocketIOByHand(chat, cookie).answer.startswith('40{"sid"')
    sign_out(alice, chat)
    assert SocketIOByHand(chat, cookie).answer == REFUSED  # the cookie that worked a moment ago


def test_socket_from_a_foreign_origin_is_refused_even_with_the_cookie(chat):
    cookie = sign_up(chat).cookie
    with pytest.raises(InvalidStatus) as refused:
        SocketIOByHand(chat, cookie, origin="http://evil.example")
    assert refused.value.response.status_code == 400
    request = urllib.request.Request(
        f"{chat.url}/socket.io/?EIO=4&transport=polling",
        headers={"Origin": "http://evil.example", "Cookie": cookie},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    assert SocketIOByHand(chat, cookie, origin=chat.url).answer.startswith('40{"sid"')


def test_packet_over_64_kib_closes_only_that_connection(chat, connect):
    alice_socket = connect(chat, sign_up(chat), rooms=["general"])
    mallory_socket = connect(chat, sign_up(chat))
    mallory_socket.emit("send message", {"room": "general", "text": "x" * 70_000})
    wait_until(lambda: mallory_socket.closed_by_server, "Mallory's socket is closed")
    assert send_to(alice_socket, "general", "still here") == OK


def test_sign_out_disconnects_every_socket_of_that_login_within_a_second(chat, connect):
    alice = sign_up(chat)
    alice_elsewhere = sign_in(chat, alice.name)  # Alice on her phone, say
    tabs = [connect(chat, alice, rooms=["general"]) for _ in range(2)]
    phone = connect(chat, alice_elsewhere, rooms=["general"])
    cookie = alice.cookie  # requests forgets it when the server clears it
    token = csrf_token(alice.http.get(f"{chat.url}/").text)
    signed_out = time.monotonic()
    alice.http.post(f"{chat.url}/logout", data={"csrf_token": token})
    for tab in tabs:
        assert tab.wait_for("41") == "41"  # Socket.IO's disconnect, sent by the server
    assert time.monotonic() - signed_out < 1
    # Her other login is untouched. The signed-out one cannot come back: not on a new
    # connection with a copy of its cookie, not by connecting again over the old one (whose
    # handshake carried the cookie). The login is gone from the database.
    assert send_to(phone, "general", "still signed in here") == OK
    assert SocketIOByHand(chat, cookie).answer == REFUSED
    assert tabs[0].connect() == REFUSED


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


# --- fast tier: per-user rate limit and coalesced presence, measured ---


def test_a_user_who_floods_gets_errors_and_no_one_else_is_delayed(limited, connect):
    alice, bob, carol = sign_up(limited), sign_up(limited), sign_up(limited)
    tabs = [connect(limited, alice) for _ in range(2)]  # two tabs, one user
    bob_socket = connect(limited, bob, rooms=["general"])
    carol_socket = connect(limited, carol, rooms=["general"])
    started = time.monotonic()
    for n in range(100):
        for tab in tabs:
            tab.emit("send message", {"room": "general", "text": f"flood {n}"}, ack=True)
    sent = time.monotonic()
    assert send_to(bob_socket, "general", "bob is not delayed") == OK
    messages_until(carol_socket, "bob is not delayed")
    bob_latency = time.monotonic() - sent
    answers = [answer for tab in tabs for answer in tab.answers(100).values()]
    elapsed = time.monotonic() - started
    accepted = answers.count(OK)
    # One bucket for both tabs: 10 at once, then 1 a second. One per tab would let 20 through.
    assert 10 <= accepted <= 10 + elapsed + 1
    too_fast = {"error": "You are sending too fast: wait a moment, then send again."}
    assert answers.count(too_fast) == 200 - accepted
    assert bob_latency < 1
    # No one was disconnected, the flooder included, who may send again a moment later.
    assert send_to(carol_socket, "general", "carol too") == OK
    wait_until(lambda: send_to(tabs[0], "general", "calm again") == OK, "Alice may send again")


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
    # Closing takes a while on a loaded machine, and a broadcast may go out every 0.2 s
    # meanwhile: still fewer than one per tab.
    assert len(left) < 10, left


# --- fast tier: tried as an attacker would ---


@pytest.mark.parametrize("event", ["disconnect", "connect"])
def test_an_event_named_disconnect_or_connect_hides_no_socket(chat, connect, event):
    owner, bob, carol = (sign_up(chat, unique(prefix)) for prefix in "abc")  # names in order
    room = create_room(chat, owner, members=[bob, carol])
    observer = connect(chat, owner, rooms=[room, "general"])
    bob_socket = connect(chat, bob, rooms=[room, "general"])
    bob_socket.emit(event, {"last_id": 0})  # 42["disconnect",...]: an event, the socket stays
    assert bob_socket.connect() == '44"Unable to connect"'  # python-socketio's own answer
    assert send_to(bob_socket, "general", "bob is here") == OK  # his events run in order
    connect(chat, carol, rooms=[room])
    presence_until(observer, room, [owner.name, bob.name, carol.name])
    post_form(owner.http, chat, f"/rooms/{room}/members/{user_id(chat, bob)}/remove")
    assert send_to(observer, room, "after bob left") == OK
    assert send_to(observer, "general", "to everyone") == OK
    assert "after bob left" not in texts_of(messages_until(bob_socket, "to everyone"))


def test_connections_that_do_not_sign_in_are_closed_and_free_their_threads(tmp_path):
    # A server of its own: the shared one still holds the threads of other tests' connections.
    with start_server(tmp_path, SIGN_IN_TIME=1) as server:
        threads = psutil.Process(server.process.pid).num_threads
        before = threads()
        refused = [SocketIOByHand(server) for _ in range(15)]  # no cookie: 44, "sign in again"
        silent = [  # never even ask to connect
            open_websocket(engine_io_url(server), close_timeout=0.1, legacy=True) for _ in range(15)
        ]
        assert {socket.answer for socket in refused} == {REFUSED}
        opened = threads()
        assert opened >= before + 60  # two a connection
        sockets = [socket.ws for socket in refused] + silent
        wait_until(lambda: all(socket.protocol.close_rcvd for socket in sockets), "all closed")
        for socket in sockets:  # Werkzeug keeps a connection until its client drops it
            socket.close()
        # Measured: one thread a connection is freed (the other lingers in Werkzeug).
        wait_until(lambda: threads() <= opened - 25, f"{opened} threads, still {threads()}")


@pytest.mark.parametrize("upgraded", [False, True], ids=["websocket", "polling-then-websocket"])
def test_a_connection_that_never_signs_in_and_ignores_the_close_is_cut_and_frees_its_threads(
    tmp_path, upgraded
):
    # A server of its own, to count its threads. A client that ignores the close packet (and the
    # close frame after it) and keeps its TCP connection, silent: Werkzeug would wait on it for a
    # next request, and simple-websocket for a frame, as long as the client likes.
    count = 10
    with start_server(tmp_path, SIGN_IN_TIME=2) as server:
        threads = psutil.Process(server.process.pid).num_threads
        before = threads()
        clients = [never_signing_in(server, upgraded) for _ in range(count)]
        received = [bytearray() for _ in clients]
        # Each connection holds a thread in Werkzeug, simple-websocket's reader, Engine.IO's
        # writer, and one that waits to send a ping (25 s: it outlives the test).
        wait_until(lambda: threads() >= before + 4 * count, "four threads a connection")
        opened = threads()
        try:
            wait_until(
                lambda: all(map(cut_by_server, clients, received)), "the server cut them all"
            )
            assert all(b"\x81\x011" in data for data in received)  # each was sent its close packet
            # The close ended the writers (one a connection); the cut ends Werkzeug's and
            # simple-websocket's (two more). The bound lies between, clear of a thread or two
            # that start or end meanwhile.
            left = opened - 2 * count
            wait_until(lambda: threads() <= left, f"{threads()} threads, not {left}")
        finally:
            for client in clients:
                client.close()


def never_signing_in(server, upgraded):
    """A raw Engine.IO WebSocket (upgraded from long-polling, if `upgraded`) that never sends
    `40`: open, then silent."""
    if not upgraded:
        return websocket_by_hand(server)
    opened = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling").text
    sid = json.loads(opened[1:])["sid"]  # 0{"sid":...}
    sock = websocket_by_hand(server, f"EIO=4&transport=websocket&sid={sid}")
    sock.sendall(masked_frame("2probe"))
    answer = b""
    while b"3probe" not in answer:
        answer += sock.recv(4096)
    sock.sendall(masked_frame("5"))  # upgraded
    return sock


def test_a_member_who_never_reads_is_dropped_and_their_queue_freed(chat, connect):
    sender, frozen = sign_up(chat, unique("a")), sign_up(chat, unique("b"))
    room = create_room(chat, sender, members=[frozen])
    sender_socket = connect(chat, sender, rooms=[room])
    frozen_socket = open_websocket(
        engine_io_url(chat),
        sock=tiny_buffer_socket(chat.port),
        additional_headers={"Cookie": frozen.cookie},
        compression=None,  # deflated, 500 times the same character would be a few bytes
        max_queue=1,  # websockets stops reading the socket at the first unread packet
        close_timeout=0.1,
        legacy=True,
    )
    try:
        frozen_socket.send("40")
        frozen_socket.send(f'42["join",{{"room":"{room}"}}]')
        presence_until(sender_socket, room, [sender.name, frozen.name])
        text = "\U0001f600" * 490  # JSON escapes each as two \uXXXX: 6 kB a packet
        most = frames_to_fill_the_kernel_buffers(6000) + QUEUE + 100
        for sent in range(0, most, 20):
            for n in range(20):
                sender_socket.emit("send message", {"room": room, "text": f"{sent + n} {text}"})
            people = [
                data["names"]
                for name, data in (sender_socket.event() for _ in range(20))
                if name == "presence"
            ]
            if [sender.name] in people:
                break
        else:
            pytest.fail(f"{most} messages later, the frozen member is still there")
    finally:
        frozen_socket.socket.close()


# Run in the step's folder: import every module of the app, check that nothing happened, then
# make an app with a config of its own. Step 08 is patched for gevent first, as gunicorn's worker
# does before it loads the app (Redis' client needs it).
IMPORT_THEN_CREATE = """
import os, sys, threading
if sys.argv[1] == "08_production":
    from gevent import monkey
    monkey.patch_all()
umask, threads = os.umask(0o022), threading.active_count()
os.umask(umask)
for name in sys.argv[3:]:
    __import__(name)
assert os.umask(umask) == umask, "importing changed the umask"
assert not os.path.exists("instance"), "importing made the instance folder"
assert threading.active_count() == threads, "importing started a thread"
import app
config = {"INSTANCE_PATH": sys.argv[2], "SECRET_KEY": "x", "MAX_MEMBERS": 3}
made = app.create_app({**config, "REDIS_URL": "redis://127.0.0.1:1/0"})  # no Redis: not needed
settings = made.secret_key, made.config["MAX_MEMBERS"], made.config["QUEUE"]
assert settings == ("x", 3, 42), settings  # the config's, over the environment's
assert os.listdir(sys.argv[2]) == ["chat.sqlite"], os.listdir(sys.argv[2])
assert made.test_client().get("/login").status_code == 200
"""


@pytest.mark.parametrize("step", [STEP, "08_production"])
def test_importing_the_app_does_nothing_and_create_app_takes_a_config(tmp_path, step):
    # A copy, without the instance folder a run may have left. gunicorn.conf.py and nginx_conf.py
    # are the servers' scripts, not modules of the app.
    folder = shutil.copytree(
        step_folder(step), tmp_path / step, ignore=shutil.ignore_patterns("instance", "__pycache__")
    )
    scripts = {"gunicorn.conf", "nginx_conf"}
    modules = sorted(path.stem for path in folder.glob("*.py") if path.stem not in scripts)
    env = {**os.environ, "QUEUE": "42", "MAX_MEMBERS": "7"}
    instance = tmp_path / "instance"
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_THEN_CREATE, step, str(instance), *modules],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_key_and_the_database_are_for_the_server_user_alone(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    instance.chmod(0o755)  # as `mkdir -p` leaves it, before the server first starts
    with start_server(tmp_path) as server:
        sign_up(server)
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    for name in ("secret_key", "chat.sqlite"):
        assert stat.S_IMODE((instance / name).stat().st_mode) == 0o600, name


def test_a_token_read_from_the_database_signs_no_one_in(chat):
    sign_up(chat)
    stored = rows(chat, "SELECT token FROM logins")[-1][0]
    # Even with the key: a session cookie made with what the database holds is refused.
    app = Flask(__name__)
    app.secret_key = (chat.database.parent / "secret_key").read_text()
    signer = SecureCookieSessionInterface().get_signing_serializer(app)
    cookie = f"session={signer.dumps({'_user_id': stored, '_fresh': True})}"
    assert SocketIOByHand(chat, cookie).answer == REFUSED


def test_a_login_ends_after_30_days_even_for_a_copy_of_its_cookie(chat):
    alice = sign_up(chat)
    token = rows(
        chat, "SELECT token FROM logins JOIN users ON users.id = user_id WHERE name = ?", alice.name
    )[0][0]

    def signed_in_for(age):
        """Make the login `age` old (an SQLite modifier), and say whether it still signs in."""
        database = sqlite3.connect(chat.database)
        with database:
            since = "UPDATE logins SET since = datetime('now', ?) WHERE token = ?"
            database.execute(since, (f"-{age}", token))
        database.close()
        return chat.url + "/" == alice.http.get(f"{chat.url}/").url

    assert signed_in_for("29 days")
    assert not signed_in_for("30 days")
    assert SocketIOByHand(chat, alice.cookie).answer == REFUSED
    sign_up(chat)  # the next sign-in deletes the expired logins
    assert rows(chat, "SELECT count(*) FROM logins WHERE token = ?", token) == [(0,)]


def test_names_of_rooms_and_people_can_be_guessed_ten_times_a_minute_at_most(guarded):
    # "That name is taken" tells that a private room exists, "There is no user called" that an
    # account does not: refused answers of both forms count together, per user.
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


@pytest.mark.parametrize("path", ["/login", "/signup"])
def test_refused_attempts_from_one_address_are_answered_429_after_ten(guarded, path):
    address = "127.0.0.2" if path == "/login" else "127.0.0.3"
    statuses = [attempt(guarded, address, path, unique("who"), "12345678") for _ in range(11)]
    assert statuses == [400] * 10 + [429]
    # Another address is not concerned.
    assert attempt(guarded, "127.0.0.4", path, unique("who"), "12345678") == 400


def test_wrong_passwords_for_one_username_are_answered_429_after_ten_from_any_address(guarded):
    victim = sign_up(guarded)
    statuses = [
        attempt(guarded, f"127.0.1.{n}", "/login", victim.name.upper(), f"guess {n}")
        for n in range(11)
    ]
    assert statuses == [400] * 10 + [429]


def test_an_unknown_username_takes_as_long_to_refuse_as_a_known_one(tmp_path):
    def seconds_to_refuse(name):
        """The time of the POST alone: the form's page is fetched before the clock starts."""
        http = requests.Session()
        fields = {"csrf_token": csrf_token(http.get(f"{server.url}/login").text)}
        started = time.monotonic()
        answer = http.post(
            f"{server.url}/login", data={**fields, "username": name, "password": "?"}
        )
        assert answer.status_code == 400
        return time.monotonic() - started

    # Werkzeug's scrypt, as the step has it: the suite's cheaper one is too quick to time.
    with start_server(tmp_path, PASSWORD_HASH="scrypt") as server:
        taken = sign_up(server, "taken")
        # In turns, so that a machine busy with other work slows both alike; 8 refusals stay
        # under the limit of 10 per address.
        known, unknown = [], []
        for _ in range(4):
            known.append(seconds_to_refuse(taken.name))
            unknown.append(seconds_to_refuse(unique("who")))
    known, unknown = min(known), min(unknown)
    assert unknown > known / 2, f"known {known * 1000:.0f} ms, unknown {unknown * 1000:.0f} ms"


@pytest.mark.parametrize("password", ["password", "12345678", "Qwertyuiop", "SAME-AS-NAME"])
def test_a_password_easy_to_guess_is_refused_on_the_sign_up_form(chat, password):
    name = unique("easy")
    password = name if password == "SAME-AS-NAME" else password
    http = requests.Session()
    answer = post_form(http, chat, "/signup", "/signup", username=name, password=password)
    assert answer.status_code == 400
    assert "That password is too easy to guess: choose another." in answer.text
    assert not rows(chat, "SELECT 1 FROM users WHERE name = ?", name)


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


def test_every_page_forbids_framing_inline_script_and_posting_forms_elsewhere(chat):
    policy = requests.get(f"{chat.url}/login").headers["Content-Security-Policy"]
    for rule in ("default-src 'self'", "frame-ancestors 'none'", "form-action 'self'"):
        assert rule in policy
