"""The pages of steps 07 and 08 in the states their READMEs show, checked as every step's are
(toolkit.pictures: axe-core, the keyboard), and photographed with PICTURES=1 (`make pictures
STEP="07 08"`).

Step 07: a sign-up refused on its form, the chat of two people, a private room's members, a tab
told to sign in again, and a film of a page that catches up after its connection came back. Step
08's pages are step 07's with the defences, so its pictures show what is new there: an easy
password refused, the Leave button of a room someone was put in, and another site's page that
frames the chat (step 07's page shows in it, step 08's does not).
"""

import functools
import http.server
import threading
from contextlib import contextmanager

import pytest
from playwright.sync_api import expect

from toolkit.launcher import chat_server
from toolkit.pages import RECONNECT_TIMEOUT, no_reload, sign_in_in_browser, sign_up_in_browser
from toolkit.people import post_form, sign_up
from toolkit.pictures import (
    Film,
    check_accessibility,
    check_bad_sign_up_is_answered_on_the_form,
    check_keyboard,
    message_box,
    messages_in,
    save_picture,
    side_by_side_in_a_film,
    tab_to,
    type_into,
)

pytestmark = pytest.mark.e2e  # every test here drives a browser


@pytest.fixture(scope="class")
def step_server(request, tmp_path_factory):
    """The class's STEP with its ENV, on a database of its own."""
    folder = tmp_path_factory.mktemp(request.cls.STEP)
    with chat_server(request.cls.STEP, folder, **request.cls.ENV) as server:
        yield server


class TestStep07RoomsAndLogins:
    STEP, ENV = "07_rooms_and_logins", {"SEND_RATE": 0}

    def test_a_bad_sign_up_is_answered_on_the_form_and_the_sign_in_page(self, page, step_server):
        check_bad_sign_up_is_answered_on_the_form(page, step_server)
        save_picture(self.STEP, "sign-up-refused.png", page.locator("main"))
        page.get_by_role("link", name="Sign in").click()
        check_accessibility(page)

    def test_alice_and_bob_chat_and_alice_adds_bob_to_a_private_room(self, two_users, step_server):
        alice, bob = two_users
        sign_up_in_browser(alice, step_server, "alice")
        sign_up_in_browser(bob, step_server, "bob")
        check_accessibility(bob)
        check_keyboard(bob)
        type_into(alice, message_box(alice), "Hi Bob!")
        type_into(bob, message_box(bob), "Hello Alice: <b>this stays text</b>")
        expect(messages_in(alice)).to_have_count(2)
        expect(alice.locator("section[data-room=general] .presence")).to_have_text("alice, bob")
        # Bob's box empties when his message is acknowledged, which may come after Alice sees it.
        expect(message_box(bob)).to_have_value("")
        type_into(bob, message_box(bob), "")
        expect(bob.get_by_role("alert")).not_to_be_empty()
        check_accessibility(bob)
        save_picture(self.STEP, "chat.png", alice.locator("body"))
        alice.get_by_label("Room name").fill("plans")
        alice.get_by_role("button", name="Create room").click()
        alice.get_by_role("link", name="Members").click()
        for name in ("bob", "nobody"):
            type_into(alice, alice.get_by_label("Username"), name)
        expect(alice.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
        expect(alice.locator(".members li")).to_have_text(["alice owner", "bob Remove"])
        check_accessibility(alice)
        check_keyboard(alice)
        save_picture(self.STEP, "members.png", alice.locator("main"))

    def test_signing_out_in_one_tab_tells_the_other_to_sign_in_again(self, page, step_server):
        sign_up_in_browser(page, step_server, "carol")
        other_tab = page.context.new_page()
        other_tab.goto(step_server.url)
        expect(other_tab.locator("#status")).to_have_text("connected")
        page.get_by_role("button", name="Sign out").click()
        expect(other_tab.get_by_role("alert")).to_have_text("You are signed out: sign in again.")
        check_accessibility(other_tab)
        save_picture(self.STEP, "signed-out.png", other_tab.locator("main"))

    def test_bob_offline_then_back_sees_what_he_missed_each_once_in_order(
        self, two_users, tmp_path
    ):
        """A film: Bob's browser goes offline while Alice chats on; when it is back online his
        page reconnects and the room sends what came after his bookmark."""
        alice, bob = two_users
        side_by_side_in_a_film(alice, bob)
        with chat_server(self.STEP, tmp_path, **self.ENV) as server:  # an empty room of its own
            sign_up_in_browser(alice, server, "alice")
            sign_up_in_browser(bob, server, "bob")
            type_into(alice, message_box(alice), "Hi Bob!")
            type_into(bob, message_box(bob), "Hi Alice!")
            for each in (alice, bob):
                expect(messages_in(each)).to_have_count(2)
            film, both = Film(), (alice.locator("main"), bob.locator("main"))
            film.shoot(*both)
            with no_reload(bob):
                bob.context.set_offline(True)
                expect(bob.locator("#status")).to_have_text("disconnected")
                for text in ("Bob? Are you there?", "I will go on anyway.", "Three for you."):
                    type_into(alice, message_box(alice), text)
                    expect(message_box(alice)).to_have_value("")
                expect(messages_in(alice)).to_have_count(5)
                expect(messages_in(bob)).to_have_count(2)
                film.shoot(*both)  # Alice has said three things Bob's page has not received
                bob.context.set_offline(False)
                expect(bob.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
                expect(messages_in(bob)).to_have_count(5)
                shown = [messages_in(each).all_text_contents() for each in (alice, bob)]
                assert shown[0] == shown[1], "Bob's page has Alice's messages, once, in order"
                film.shoot(*both)
            check_accessibility(bob)
            film.save(self.STEP, "catch-up.gif", 1800)


# Step 08's pages carry a Content-Security-Policy that allows no inline script: these contexts
# bypass it to inject axe-core (the pages still send it). The framing test opens contexts of its
# own, which do not: there the policy is the point.
@pytest.mark.browser_context_args(bypass_csp=True)
class TestStep08UnderAttack:
    STEP, ENV = "08_under_attack", {"SEND_RATE": 0}

    def test_a_password_easy_to_guess_is_refused_on_the_sign_up_form(self, page, step_server):
        page.goto(f"{step_server.url}/signup")
        check_accessibility(page)
        check_keyboard(page)
        type_into(page, page.get_by_label("Username"), "bob", then="Tab")
        type_into(page, page.get_by_label("Password"), "password")
        expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#password-error")).to_have_text(
            "That password is too easy to guess: choose another."
        )
        check_accessibility(page)
        save_picture(self.STEP, "easy-password.png", page.locator("main"))

    def test_a_member_put_in_a_room_by_someone_else_leaves_it(self, page, step_server):
        mallory, bob = sign_up(step_server, "mallory"), sign_up(step_server, "bob")
        room = "free-prizes"  # anyone may add anyone to a room: mallory adds bob to hers
        post_form(mallory.http, step_server, "/rooms", name=room)
        post_form(mallory.http, step_server, f"/rooms/{room}/members", username=bob.name)
        sign_in_in_browser(page, step_server, bob.name)
        page.goto(f"{step_server.url}/rooms/{room}/members")
        expect(page.locator(".members li")).to_have_text(["bob", "mallory owner"])
        check_accessibility(page)
        check_keyboard(page)
        save_picture(self.STEP, "leave.png", page.locator("main"))
        tab_to(page, page.get_by_role("button", name="Leave"))
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text("connected")
        expect(page.get_by_role("navigation", name="Rooms").get_by_role("link")).to_have_text(
            ["general", "random"]
        )

    def test_another_sites_page_frames_step_07_but_not_step_08(
        self, browser, step_server, tmp_path
    ):
        """Another origin's page frames each step's sign-in page: step 07's shows; for step
        08's, whose Content-Security-Policy says frame-ancestors 'none', the browser shows
        nothing in the frame."""
        with (
            chat_server("07_rooms_and_logins", tmp_path) as step_07,
            attacker_site(tmp_path) as site,
        ):
            pages = []
            for step, server in (("07", step_07), ("08", step_server)):
                (tmp_path / f"{server.port}.html").write_text(attacker_page(server.url, step))
                context = browser.new_context(viewport={"width": 480, "height": 560})
                pages.append(context.new_page())
            pages[0].goto(f"{site}/{step_07.port}.html")  # its load event waits for the frame's
            refused = "frame-ancestors 'none'"  # in the browser's report of the refusal
            with pages[1].expect_console_message(lambda message: refused in message.text):
                pages[1].goto(f"{site}/{step_server.port}.html")
            framed_07, framed_08 = (page.frames[1].url for page in pages)
            assert framed_07 == f"{step_07.url}/login"
            in_frame = pages[0].frame_locator("iframe")
            expect(in_frame.get_by_role("button", name="Sign in")).to_be_visible()
            assert framed_08.startswith("chrome-error://"), framed_08  # the browser's, not ours
            save_picture(self.STEP, "framed.png", *pages)
            for page in pages:
                page.context.close()


@contextmanager
def attacker_site(folder):
    """Another site: the files of `folder` served at http://localhost:PORT, an origin other than
    the steps' http://127.0.0.1:PORT. (A page that Playwright makes up with page.route frames
    nothing from 127.0.0.1: Chromium keeps such pages away from the local network.)"""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()


def attacker_page(url, step):
    """Another site's page, which frames the sign-in page of `step` at `url`, under a decoy."""
    return f"""<!doctype html><html lang="en"><title>Another site</title>
<body style="font-family: system-ui, sans-serif; margin: 1rem">
<h1 style="font-size: 1.2rem; margin: 0 0 .5rem">Another site: win a prize!</h1>
<p style="margin: 0 0 .5rem">In a frame: step {step}'s {url}/login</p>
<iframe src="{url}/login" style="width: 100%; height: 430px; border: 2px dashed #b3261e"></iframe>
</body></html>"""
