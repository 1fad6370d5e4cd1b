"""Steps 07 and 08: accounts. Sign up, sign in and sign out, in the browser and over the forms;
who may open a socket; signing out closes a login's sockets. Every test runs on both steps.

The browser tests run against `python app.py`; the forms and the sockets against the app made in
this process (toolkit.inprocess), where a handler's logic is the point.
"""

import re

import pytest
from playwright.sync_api import expect

from toolkit.clients import socketio_by_hand
from toolkit.launcher import chat_server
from toolkit.pages import (
    RECONNECT_TIMEOUT,
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
    REFUSED,
    create_room,
    csrf_token,
    post_form,
    rows,
    send_to,
    session,
    sign_in,
    sign_out,
    sign_up,
    unique,
    user_id,
)

STEPS = ["07_rooms_and_logins", "08_under_attack"]
# Step 08 limits refused sign-ins per address: every request here comes from one.
LOOSE = {"ACCOUNT_ATTEMPTS": "1000/minute"}


@pytest.fixture(scope="module", params=STEPS)
def chat(request, in_process):
    """The step's app in this process, with no rate limit."""
    return in_process(request.param, SEND_RATE=0, **LOOSE)


@pytest.fixture(scope="module", params=STEPS)
def server(request, tmp_path_factory):
    """`python app.py` of the step, for the browser."""
    with chat_server(request.param, tmp_path_factory.mktemp("server"), SEND_RATE=0) as running:
        yield running


@pytest.fixture(scope="module")
def taken(chat):
    """An account called "taken", for the tests of refused sign-ups and sign-ins."""
    return sign_up(chat, "taken")


def accounts_and_rooms(chat):
    return [
        rows(chat, f"SELECT * FROM {table}") for table in ("users", "logins", "rooms", "members")
    ]


# --- in the browser ---


@pytest.mark.e2e
def test_sign_up_sign_out_and_sign_in_again_in_the_browser(page, server):
    name = sign_up_in_browser(page, server, unique("alice"))
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
def test_taken_username_is_answered_on_the_sign_up_form(page, server):
    taken = sign_up(server).name
    page.goto(f"{server.url}/signup")
    page.get_by_label("Username").fill(taken.upper())
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text("That username is taken.")).to_be_visible()
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")


@pytest.mark.e2e
def test_sign_out_in_one_tab_signs_out_every_tab(new_user, server):
    first = new_user()
    second = first.context.new_page()  # a second tab: same browser, same cookie
    name = sign_up_in_browser(first, server, unique("alice"))
    second.goto(server.url)
    expect(second.locator("#status")).to_have_text("connected")
    elsewhere = new_user()  # Alice in another browser
    sign_in_in_browser(elsewhere, server, name)
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
def test_page_whose_session_is_gone_says_sign_in_again(page, server):
    sign_up_in_browser(page, server, unique("alice"))
    page.context.clear_cookies()  # the session ends while the page is open
    with no_reload(page):
        page.context.set_offline(True)  # the connection drops; it comes back without a cookie
        expect(page.locator("#status")).to_have_text("disconnected")
        page.context.set_offline(False)
        expect(page.get_by_role("alert")).to_have_text(
            "You are signed out: sign in again.", timeout=RECONNECT_TIMEOUT
        )


# --- the forms ---


def test_signing_up_signs_you_in_and_the_chat_page_greets_you(chat):
    http = session(chat)
    page = http.get(f"{chat.url}/signup")
    fields = {"csrf_token": csrf_token(page.text), "username": "alice", "password": PASSWORD}
    answer = http.client.post("/signup", data=fields)  # not followed: its Set-Cookie is here
    cookie = answer.headers["Set-Cookie"]
    assert re.search(r"; HttpOnly\b", cookie)  # no script can read it
    assert re.search(r"; SameSite=Lax\b", cookie)
    assert answer.headers["Location"] == "/"
    assert "Signed in as <b>alice</b>" in http.get(f"{chat.url}/").text
    # Only a hash of the password is stored.
    (stored,) = rows(chat, "SELECT password_hash FROM users WHERE name = ?", "alice")
    assert PASSWORD not in stored[0]


def test_the_chat_page_needs_a_sign_in(chat):
    response = session(chat).get(f"{chat.url}/")
    assert response.url == f"{chat.url}/login?next=%2F"
    assert "Sign in to chat." in response.text
    # A form with its CSRF token, posted without a sign-in, goes the same way.
    response = post_form(session(chat), chat, "/rooms", name=unique("room"))
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
    http = session(chat)
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
    response = post_form(session(chat), chat, "/login", username=username, password=password)
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


# --- who may open a socket ---


def test_socket_without_a_signed_in_session_is_refused_in_connect(chat):
    assert socketio_by_hand(chat).answer == REFUSED


@pytest.mark.parametrize(
    "auth",
    [{"last_id": "7"}, {"last_id": -1}, {"last_id": True}],
    ids=["text", "negative", "true"],
)
def test_a_last_id_that_is_not_a_whole_number_is_refused(chat, auth):
    answer = socketio_by_hand(chat, sign_up(chat).cookie, auth).answer
    assert answer == '44{"message":"auth.last_id must be a whole number, 0 or more."}'


def test_socket_with_a_forged_or_signed_out_cookie_is_refused(chat):
    alice = sign_up(chat)
    cookie = alice.cookie
    forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert socketio_by_hand(chat, forged).answer == REFUSED
    assert socketio_by_hand(chat, cookie).answer.startswith('40{"sid"')
    sign_out(alice, chat)
    assert socketio_by_hand(chat, cookie).answer == REFUSED  # the cookie that worked a moment ago


def test_sign_out_disconnects_every_socket_of_that_login_within_a_second(chat, connect):
    alice = sign_up(chat)
    alice_elsewhere = sign_in(chat, alice.name)  # Alice on her phone, say
    tabs = [connect(chat, alice, rooms=["general"]) for _ in range(2)]
    phone = connect(chat, alice_elsewhere, rooms=["general"])
    cookie = alice.cookie  # forgotten when the server clears it
    token = csrf_token(alice.http.get(f"{chat.url}/").text)
    alice.http.post(f"{chat.url}/logout", data={"csrf_token": token})
    for tab in tabs:
        assert tab.wait_for("41", timeout=1) == "41"  # Socket.IO's disconnect, from the server
    # Her other login is untouched. The signed-out one cannot come back: not on a new
    # connection with a copy of its cookie, not by connecting again over the old one (whose
    # handshake carried the cookie). The login is gone from the database.
    assert send_to(phone, "general", "still signed in here") == OK
    assert socketio_by_hand(chat, cookie).answer == REFUSED
    assert tabs[0].connect() == REFUSED
