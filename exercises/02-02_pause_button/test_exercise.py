"""Exercise 02-02: a Pause button that talks back over the clock's own socket (htmx 4 page)."""

import json
import re

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from toolkit.pages import no_reload

STEP = "02_clock"
A_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def form_frame(action):
    """What htmx 4 sends for the form: its fields and a headers object, as one JSON frame."""
    return json.dumps({"action": action, "headers": {"HX-Request": "true"}})


def next_frame_with(ws, text, frames=20):
    """The next frame that holds `text`, among the next `frames` (a push every 0.1 s here)."""
    for _ in range(frames):
        frame = ws.recv(timeout=5)
        if text in frame:
            return frame
    raise AssertionError(f"no frame with {text!r} among the next {frames}")


def test_a_paused_socket_gets_no_pushes_while_another_keeps_ticking(serve):
    server = serve(STEP, CLOCK_INTERVAL=0.1)
    url = f"{server.ws_url}/clock"
    # A short close_timeout: Werkzeug may keep the connection after the close handshake.
    with connect(url, close_timeout=0.1) as alice, connect(url, close_timeout=0.1) as bob:
        alice.recv(timeout=5)  # the first push
        alice.send(form_frame("pause"))
        answer = next_frame_with(alice, 'id="pause"')
        assert 'hx-swap-oob="true"' in answer
        assert re.search(r'name="action"[^>]*value="resume"', answer)
        assert "Resume" in answer
        for _ in range(5):  # half a second of Bob's pushes, at least
            assert 'id="clock"' in bob.recv(timeout=5)
        with pytest.raises(TimeoutError):
            alice.recv(timeout=0)  # nothing came for Alice meanwhile
        alice.send(form_frame("resume"))
        assert "Pause" in next_frame_with(alice, 'id="pause"')
        assert 'id="clock"' in alice.recv(timeout=1)  # the time, at once


@pytest.mark.e2e
def test_alice_pauses_her_clock_bob_keeps_his_then_she_resumes_without_reload(two_users, serve):
    server = serve(STEP, CLOCK_INTERVAL=0.2)
    alice, bob = two_users
    for page in (alice, bob):
        page.goto(server.url)
    for page in (alice, bob):  # both sockets are open
        expect(page.get_by_role("status", name="Clocks open right now")).to_have_text("2")
    clock = {page: page.get_by_role("timer", name="Server time") for page in (alice, bob)}
    with no_reload(alice), no_reload(bob):
        pause = alice.get_by_role("button", name="Pause the clock")
        expect(pause).to_be_visible()
        pause.click()
        expect(alice.get_by_role("button", name="Resume the clock")).to_be_visible()
        frozen = clock[alice].text_content()
        assert A_TIME.match(frozen)
        # Bob's clock changes twice: a whole second goes by, in which Alice's would have moved.
        for _ in range(2):
            expect(clock[bob]).not_to_have_text(clock[bob].text_content())
        assert clock[alice].text_content() == frozen
        expect(bob.get_by_role("button", name="Pause the clock")).to_be_visible()
        alice.get_by_role("button", name="Resume the clock").click()
        expect(alice.get_by_role("button", name="Pause the clock")).to_be_visible()
        expect(clock[alice]).not_to_have_text(frozen)
        expect(clock[alice]).to_have_text(A_TIME)
