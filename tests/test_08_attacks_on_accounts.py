"""Step 08's defences of its accounts, each attacked as its README's table says: passwords guessed
from one address or at one username, the time a refusal takes, easy passwords, tokens read from
the database, logins without end, an instance folder others may read, a page framed by another
site. Step 07 has none of them: notebooks/08_under_attack shows each attack working there.

The app runs in this process (toolkit.inprocess), with its default limits; the instance folder's
modes are a server's (the process sets its umask), so that test runs `python app.py`.
"""

import sqlite3
import stat
import time

import pytest

from toolkit.clients import socketio_by_hand
from toolkit.launcher import chat_server
from toolkit.people import (
    REFUSED,
    csrf_token,
    post_form,
    rows,
    session,
    sign_up,
    unique,
)

STEP = "08_under_attack"


@pytest.fixture(scope="module")
def guarded(in_process):
    """The step with its default limit on refused sign-ins and sign-ups: 10 a minute."""
    return in_process(STEP)


def attempt(chat, address, path, username, password):
    """One sign-in or sign-up from `address`: the answer's status code."""
    http = chat.http_session(address)
    fields = {"username": username, "password": password}
    return post_form(http, chat, path, form_page=path, **fields).status_code


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


def test_an_unknown_username_takes_as_long_to_refuse_as_a_known_one(in_process):
    # Werkzeug's scrypt, as the step has it: the suite's cheaper one is too quick to time.
    chat = in_process(STEP, PASSWORD_HASH="scrypt")

    def seconds_to_refuse(name):
        """The time of the POST alone: the form's page is fetched before the clock starts."""
        http = session(chat)
        fields = {"csrf_token": csrf_token(http.get(f"{chat.url}/login").text)}
        started = time.monotonic()
        answer = http.post(f"{chat.url}/login", data={**fields, "username": name, "password": "?"})
        assert answer.status_code == 400
        return time.monotonic() - started

    taken = sign_up(chat, "taken")
    # In turns, so that a machine busy with other work slows both alike; 8 refusals stay under
    # the limit of 10 per address.
    known, unknown = [], []
    for _ in range(4):
        known.append(seconds_to_refuse(taken.name))
        unknown.append(seconds_to_refuse(unique("who")))
    known, unknown = min(known), min(unknown)
    assert unknown > known / 2, f"known {known * 1000:.0f} ms, unknown {unknown * 1000:.0f} ms"


@pytest.mark.parametrize("password", ["password", "12345678", "Qwertyuiop", "SAME-AS-NAME"])
def test_a_password_easy_to_guess_is_refused_on_the_sign_up_form(guarded, password):
    name = unique("easy")
    password = name if password == "SAME-AS-NAME" else password
    http = session(guarded)  # 4 refusals from its address, under the limit of 10
    answer = post_form(http, guarded, "/signup", "/signup", username=name, password=password)
    assert answer.status_code == 400
    assert "That password is too easy to guess: choose another." in answer.text
    assert not rows(guarded, "SELECT 1 FROM users WHERE name = ?", name)


def test_a_token_read_from_the_database_signs_no_one_in(guarded):
    sign_up(guarded)
    stored = rows(guarded, "SELECT token FROM logins")[-1][0]
    # Even with the key: a session cookie made with what the database holds is refused.
    app = guarded.app
    signer = app.session_interface.get_signing_serializer(app)
    cookie = f"session={signer.dumps({'_user_id': stored, '_fresh': True})}"
    assert socketio_by_hand(guarded, cookie).answer == REFUSED


def test_a_login_ends_after_30_days_even_for_a_copy_of_its_cookie(guarded):
    alice = sign_up(guarded)
    token = rows(
        guarded,
        "SELECT token FROM logins JOIN users ON users.id = user_id WHERE name = ?",
        alice.name,
    )[0][0]

    def signed_in_for(age):
        """Make the login `age` old (an SQLite modifier), and say whether it still signs in."""
        database = sqlite3.connect(guarded.database)
        with database:
            since = "UPDATE logins SET since = datetime('now', ?) WHERE token = ?"
            database.execute(since, (f"-{age}", token))
        database.close()
        return guarded.url + "/" == alice.http.get(f"{guarded.url}/").url

    assert signed_in_for("29 days")
    assert not signed_in_for("30 days")
    assert socketio_by_hand(guarded, alice.cookie).answer == REFUSED
    sign_up(guarded)  # the next sign-in deletes the expired logins
    assert rows(guarded, "SELECT count(*) FROM logins WHERE token = ?", token) == [(0,)]


def test_the_key_and_the_database_are_for_the_server_user_alone(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    instance.chmod(0o755)  # as `mkdir -p` leaves it, before the server first starts
    with chat_server(STEP, tmp_path) as server:
        sign_up(server)
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    for name in ("secret_key", "chat.sqlite"):
        assert stat.S_IMODE((instance / name).stat().st_mode) == 0o600, name


def test_every_page_forbids_framing_inline_script_and_posting_forms_elsewhere(guarded):
    policy = session(guarded).get(f"{guarded.url}/login").headers["Content-Security-Policy"]
    for rule in ("default-src 'self'", "frame-ancestors 'none'", "form-action 'self'"):
        assert rule in policy
