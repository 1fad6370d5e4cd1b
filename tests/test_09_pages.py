"""Step 09's pages through nginx in the states its README shows, checked as every step's are
(toolkit.pictures: axe-core, the keyboard), and photographed with PICTURES=1 (`make pictures
STEP=09`): two people on two app servers, a finished job, a tab on the other server told to sign
in again, and a film of a rolling restart seen from the pages.
"""

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.pages import RECONNECT_TIMEOUT, sign_up_in_browser
from toolkit.pictures import (
    Film,
    check_accessibility,
    check_bad_sign_up_is_answered_on_the_form,
    check_keyboard,
    follow_to_done,
    message_box,
    messages_in,
    save_picture,
    side_by_side,
    side_by_side_in_a_film,
    tab_to,
    type_into,
)
from toolkit.stack import TOOLS, Stack

pytestmark = pytest.mark.e2e  # every test here drives a browser

STEP = "09_production"


@pytest.fixture(scope="class")
def stack(tmp_path_factory):
    """Step 09's stack, as its own tests start it (and skip it without nginx or Redis)."""
    need_tools(*TOOLS)
    settings = {"JOB_STEPS": 4, "JOB_STEP_SECONDS": 0.5, "MAX_JOBS": 1, "SEND_RATE": 0}
    with Stack(STEP, tmp_path_factory.mktemp(STEP), **settings) as stack:
        yield stack


def app_server(page):
    server = page.locator("#server")
    expect(server).to_have_text(re.compile("^app[12]$"))
    return server.text_content()


# Step 09's Content-Security-Policy allows no inline script: these contexts bypass it to inject
# axe-core (the pages still send it), and accept the self-signed certificate.
@pytest.mark.browser_context_args(ignore_https_errors=True, bypass_csp=True)
class TestStep09Production:
    STEP = STEP

    def test_alice_and_bob_chat_through_nginx_each_on_an_app_server(self, two_users, stack):
        alice, bob = two_users
        side_by_side(alice, bob)
        check_bad_sign_up_is_answered_on_the_form(alice, stack)
        sign_up_in_browser(alice, stack, "alice")
        sign_up_in_browser(bob, stack, "bob")
        assert app_server(alice) != app_server(bob)
        check_keyboard(bob)
        type_into(alice, message_box(alice), "Hi Bob, from one server")
        type_into(bob, message_box(bob), "Hello Alice, from the other")
        for page in (alice, bob):
            expect(messages_in(page)).to_have_count(2)
            expect(page.locator("section[data-room=general] .presence")).to_have_text("alice, bob")
        check_accessibility(bob)
        save_picture(self.STEP, "two-servers.png", alice.locator("main"), bob.locator("main"))
        alice.get_by_label("Room name").fill("plans")
        alice.get_by_role("button", name="Create room").click()
        alice.get_by_role("link", name="Members").click()
        check_accessibility(alice)

    def test_a_job_streams_through_nginx_and_each_server_runs_one_at_a_time(self, page, stack):
        sign_up_in_browser(page, stack, "carol")
        page.get_by_role("link", name="Jobs").click()
        check_accessibility(page)
        check_keyboard(page)
        start = page.get_by_role("button", name="Start a job")
        tab_to(page, start)
        page.keyboard.press("Enter")
        card = page.locator("article.job")
        follow_to_done(card)
        bar, whole = (part.bounding_box()["width"] for part in (card.locator("progress"), card))
        assert bar > whole / 2, "the bar is the card's width (step 06's style)"
        check_accessibility(page)
        save_picture(self.STEP, "job.png", page.locator("main"))
        for _ in range(6):  # each server runs one job at a time (MAX_JOBS): soon one is refused
            with page.expect_response(re.compile("/jobs$")) as answer:
                start.click()
            if answer.value.status == 429:
                break
        expect(page.locator("#error")).to_contain_text("Try again when one is done.")
        check_accessibility(page)
        with page.context.expect_page() as opened:
            page.get_by_role("link", name="Follow this job in another tab").first.click()
        expect(opened.value.get_by_role("status")).to_have_text("Done")
        check_accessibility(opened.value)

    def test_signing_out_closes_the_same_login_on_the_other_server(self, page, stack):
        sign_up_in_browser(page, stack, "dave")
        other_tab = page.context.new_page()
        for _ in range(3):  # nginx sends a socket to the app server with the fewest: the other
            other_tab.goto(stack.url)  # one, unless another test's are still closing there
            if app_server(other_tab) != app_server(page):
                break
        assert app_server(other_tab) != app_server(page)
        page.get_by_role("button", name="Sign out").click()
        expect(other_tab.get_by_role("alert")).to_have_text("You are signed out: sign in again.")
        check_accessibility(other_tab)
        save_picture(self.STEP, "signed-out.png", other_tab.locator("main"))

    def test_a_rolling_restart_moves_alice_to_the_other_server_and_she_misses_nothing(
        self, two_users, tmp_path
    ):
        """A film: Alice's app server stops gracefully (SIGTERM) while Bob chats on the other;
        her page reconnects through nginx to the other server and catches up. Alice's page runs
        on Playwright's clock, paused while her socket is down: socket.io-client's reconnect
        timer waits for the frame that shows her disconnected, then runs."""
        need_tools(*TOOLS)
        alice, bob = two_users
        side_by_side_in_a_film(alice, bob)
        alice.context.clock.install()
        with Stack(STEP, tmp_path, SEND_RATE=0) as own_stack, ThreadPoolExecutor(1) as stopper:
            sign_up_in_browser(alice, own_stack, "alice")
            sign_up_in_browser(bob, own_stack, "bob")
            stopped, other = app_server(alice), app_server(bob)
            assert stopped != other
            type_into(alice, message_box(alice), f"Hi Bob, I am on {stopped}.")
            type_into(bob, message_box(bob), f"Hi Alice, I am on {other}.")
            for page in (alice, bob):
                expect(messages_in(page)).to_have_count(2)
            film, both = Film(), (alice.locator("main"), bob.locator("main"))
            film.shoot(*both)
            # No reload (toolkit.pages.no_reload cannot tell here: the fake clock also fakes
            # `performance`, whose list of navigations is then empty).
            alice.evaluate("window.__marker = 'first load'")
            alice.clock.pause_at(alice.evaluate("Date.now()") + 1000)
            stopping = stopper.submit(own_stack.stop, stopped)
            expect(alice.locator("#status")).to_have_text("disconnected", timeout=20_000)
            type_into(bob, message_box(bob), f"{stopped} stopped: this waits for you.")
            expect(messages_in(bob)).to_have_count(3)
            film.shoot(*both)  # Alice's page is away; Bob's message is stored
            alice.clock.resume()
            expect(alice.locator("#server")).to_have_text(other, timeout=RECONNECT_TIMEOUT)
            expect(alice.locator("#status")).to_have_text("connected")
            expect(messages_in(alice)).to_have_count(3)
            film.shoot(*both)  # back, on the other server, with what she missed
            type_into(alice, message_box(alice), f"Back, now on {other}.")
            for page in (alice, bob):
                expect(messages_in(page)).to_have_count(4)
            film.shoot(*both)
            assert alice.evaluate("window.__marker") == "first load", "Alice's page was reloaded"
            stopping.result()
            shown = [messages_in(page).all_text_contents() for page in (alice, bob)]
            assert shown[0] == shown[1], "both pages show every message once, in order"
            check_accessibility(alice)
            film.save(self.STEP, "restart.gif", 1800)
