"""The pages of steps 01 to 06 in the states a learner should see, in a real browser, as pictures.

Each test drives a step's pages into their states (empty, with messages, with an error shown) and
checks each state with toolkit.pictures (axe-core and the keyboard alone; a message is sent with
Tab, typing and Enter). `make pictures` sets PICTURES=1: the tests then also photograph the states
into steps/NN_*/pictures/, for the step's README. Steps 07 on have files of their own
(tests/test_NN_pages.py), with the same checks.
"""

import re
import sys
from contextlib import ExitStack
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import expect

from toolkit.clients import announce, messages, online_count, open_chat, say
from toolkit.fixtures import need_tools
from toolkit.launcher import ROOT, RedisServer, StepServer, start_side_by_side
from toolkit.pages import RECONNECT_TIMEOUT, no_reload
from toolkit.pictures import (
    PICTURES,
    Film,
    check_accessibility,
    check_keyboard,
    follow_to_done,
    save_picture,
    side_by_side,
    tab_to,
    type_into,
)

pytestmark = pytest.mark.e2e  # every test here drives a browser

CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S"


# --- the clock's text ---


def a_second_after(shown: str) -> str:
    """The clock's text one second after `shown` (steps 02 and 04 show YYYY-MM-DD HH:MM:SS)."""
    then = datetime.strptime(shown, CLOCK_FORMAT) + timedelta(seconds=1)
    return then.strftime(CLOCK_FORMAT)


# --- the checks can fail ---


def test_axe_core_finds_an_input_without_a_label(page):
    page.set_content("<!doctype html><html lang=en><title>t</title><main><input></main></html>")
    with pytest.raises(AssertionError, match="critical label: Form elements must have labels"):
        check_accessibility(page)


def test_the_keyboard_check_finds_a_button_tab_skips_and_a_focus_ring_taken_away(page):
    ring = "<style>:focus-visible { outline: 3px solid }</style>"
    page.set_content(f'{ring}<button>Reached</button> <button tabindex="-1">Skipped</button>')
    with pytest.raises(AssertionError, match="never reached"):
        check_keyboard(page)
    page.set_content("<style>:focus { outline: none }</style><button>No ring</button>")
    with pytest.raises(AssertionError, match="no focus ring"):
        check_keyboard(page)


# --- the steps, each served once for its class ---


@pytest.fixture(scope="class")
def step_server(request, tmp_path_factory):
    """The class's STEP with its ENV (and a fresh database in INSTANCE_PATH for the steps that
    keep one)."""
    folder = tmp_path_factory.mktemp(request.cls.STEP)
    env = {"INSTANCE_PATH": folder / "instance", **request.cls.ENV}
    with StepServer(request.cls.STEP, folder, **env) as server:
        yield server


class TestStep01Echo:
    STEP, ENV = "01_echo", {}

    def test_the_page_echoes_what_the_keyboard_sends(self, page, step_server):
        page.goto(step_server.url)
        expect(page.locator("#status")).to_have_text("open")
        check_accessibility(page)
        check_keyboard(page)
        with no_reload(page):
            for text in ("hello, echo", "<b>tags</b> stay text"):
                type_into(page, page.get_by_label("Message"), text)
            expect(messages(page)).to_have_text(["hello, echo", "<b>tags</b> stay text"])
        check_accessibility(page)
        save_picture(self.STEP, "echo.png", page.locator("main"))


class TestStep02Clock:
    STEP, ENV = "02_clock", {"CLOCK_INTERVAL": 0.2}

    def test_the_htmx_4_clock_ticks_while_the_mismatched_page_stands_still(self, page, step_server):
        ticking, still = page, page.context.new_page()
        side_by_side(ticking, still)
        ticking.goto(step_server.url)
        still.goto(f"{step_server.url}/mismatch")
        served = still.locator("#clock").text_content()
        clock = ticking.locator("#clock")
        expect(clock).not_to_have_text(served)  # the first push
        for _ in range(3):  # a film whose frames are a second apart, as its README says
            film, shown, steady = Film(), clock.text_content(), True
            for _ in range(3 if PICTURES else 1):  # one tick shows it moves; the film shows three
                shown = a_second_after(shown)
                expect(clock).to_have_text(shown)
                film.shoot(ticking.locator("main"), still.locator("main"))
                steady = steady and clock.text_content() == shown  # so the frame shows it
            if steady:
                break
        else:
            raise AssertionError("the clock moved on while each film was being shot")
        expect(still.locator("#clock")).to_have_text(served)
        film.save(self.STEP, "ticking-and-still.gif", 1000)
        for each in (ticking, still):
            check_accessibility(each)
            check_keyboard(each)

    def test_the_htmx_2_and_htmx_1_pages_have_no_serious_violation(self, page, step_server):
        for path in ("/htmx2", "/htmx1"):
            page.goto(step_server.url + path)
            check_accessibility(page)


class TestStep03Chat:
    STEP, ENV = "03_chat", {"SEND_BURST": 5, "SEND_RATE": 0.1}

    def test_alice_and_bob_chat_and_alice_sending_too_fast_is_told_to_slow_down(
        self, two_users, step_server
    ):
        alice, bob = two_users
        open_chat(alice, step_server, online=1)
        check_accessibility(alice)
        check_keyboard(alice)
        type_into(alice, alice.get_by_label("Name"), "Alice", then="Tab")
        type_into(alice, alice.get_by_label("Message"), "Hi Bob!")
        open_chat(bob, step_server, "Bob", online=2)
        say(bob, "Hello Alice: <b>this stays text</b>")
        expect(messages(alice)).to_have_count(2)
        for n in range(1, 7):  # she has sent 1 already: the limit lets 4 more through
            say(alice, f"quick {n}")
        expect(alice.get_by_role("alert")).to_contain_text("Slow down")
        expect(online_count(alice)).to_have_text("2")
        check_accessibility(alice)
        save_picture(self.STEP, "slow-down.png", alice.locator("main"))

    def test_a_message_alice_types_crosses_to_bob_page(self, two_users, serve):
        """A film of one message: Alice types it, sends it, and it shows on both pages."""
        alice, bob = two_users
        server = serve(self.STEP)  # a room of its own: no history from the other tests
        side_by_side(alice, bob)
        open_chat(alice, server, "Alice", online=1)
        open_chat(bob, server, "Bob", online=2)
        expect(online_count(alice)).to_have_text("2")
        film = Film()
        both = alice.locator("main"), bob.locator("main")
        film.shoot(*both)
        with no_reload(bob):
            type_into(alice, alice.get_by_label("Message"), "Hi Bob, can you see this?", then="End")
            film.shoot(*both)  # typed on Alice's page, not sent yet
            tab_to(alice, alice.get_by_label("Message"))
            alice.keyboard.press("Enter")
            for page in (alice, bob):
                expect(messages(page)).to_contain_text(["Hi Bob, can you see this?"])
        film.shoot(*both)
        film.save(self.STEP, "message-crosses.gif", 1500)
        check_accessibility(bob)


class TestStep04SocketioBroadcast:
    STEP, ENV = "04_socketio_broadcast", {"CLOCK_INTERVAL": 1}

    def test_alice_and_bob_chat_and_a_blank_message_is_answered_in_her_alert(
        self, two_users, step_server
    ):
        alice, bob = two_users
        open_chat(alice, step_server)
        check_accessibility(alice)
        check_keyboard(alice)
        open_chat(bob, step_server, "Bob")
        type_into(alice, alice.get_by_label("Name"), "Alice", then="Tab")
        type_into(alice, alice.get_by_label("Message"), "Hi Bob!")
        say(bob, "Hello Alice: <b>this stays text</b>")
        expect(messages(alice)).to_have_count(2)
        say(alice, "   ")
        expect(alice.get_by_role("alert")).not_to_be_empty()
        expect(online_count(alice)).to_have_text("2")
        check_accessibility(alice)
        save_picture(self.STEP, "chat.png", alice.locator("main"))


@pytest.fixture(scope="class")
def redis_and_two_servers(tmp_path_factory):
    """Step 05 as its own tests start it: Redis, servers A and B; and an announce(text)."""
    need_tools("redis-server")
    folder = tmp_path_factory.mktemp("05_scale_out")
    with ExitStack() as stop_later:
        redis_server = stop_later.enter_context(RedisServer(folder))
        settings = {"PRESENCE_INTERVAL": 0.2, "CLOCK_INTERVAL": 0.5}
        servers = start_side_by_side(
            "05_scale_out", 2, folder, REDIS_URL=redis_server.url, **settings
        )
        for server in servers:
            stop_later.callback(server.stop)
        yield (lambda text: announce(redis_server.url, text)), *servers


class TestStep05ScaleOut:
    STEP = "05_scale_out"

    def test_alice_on_server_a_and_bob_on_server_b_chat_and_hear_one_announcement(
        self, two_users, redis_and_two_servers
    ):
        announce, server_a, server_b = redis_and_two_servers
        alice, bob = two_users
        side_by_side(alice, bob)
        open_chat(alice, server_a, "Alice")
        open_chat(bob, server_b, "Bob")
        check_accessibility(alice)
        check_keyboard(alice)
        type_into(alice, alice.get_by_label("Message"), "Hi Bob, from server A")
        say(bob, "Hello Alice, from server B")
        assert announce("The chat closes at six").returncode == 0
        for page in (alice, bob):
            expect(messages(page)).to_have_count(2)
            expect(page.get_by_role("status", name="Announcement")).to_have_text(
                "The chat closes at six"
            )
            expect(online_count(page)).to_have_text("2")
        check_accessibility(alice)
        save_picture(self.STEP, "two-servers.png", alice.locator("main"), bob.locator("main"))


class TestStep06SseProgress:
    STEP, ENV = "06_sse_progress", {"JOB_STEPS": 5, "JOB_STEP_SECONDS": 0.3}

    def test_a_job_card_fills_its_bar_and_its_status_line_says_each_step(self, page, step_server):
        page.goto(step_server.url)
        check_accessibility(page)
        check_keyboard(page)
        tab_to(page, page.get_by_role("button", name="Start a job"))
        page.keyboard.press("Enter")
        card = page.locator("article.job")
        film = follow_to_done(card)
        expect(card.get_by_role("log").get_by_role("listitem")).to_have_count(5)
        check_accessibility(page)
        film.save(self.STEP, "job-progress.gif", 400)
        with page.context.expect_page() as opened:
            page.get_by_role("link", name="Follow this job in another tab").click()
        expect(opened.value.get_by_role("status")).to_have_text("Done")
        check_accessibility(opened.value)

    def test_a_refused_job_and_a_job_lost_in_a_restart_are_said_in_alerts(self, page, serve):
        server = serve(self.STEP, MAX_JOBS=2, JOB_STEPS=100, JOB_STEP_SECONDS=0.2)
        page.goto(server.url)
        start = page.get_by_role("button", name="Start a job")
        cards = page.locator("article.job")
        for running in (1, 2):
            start.click()
            expect(cards.nth(running - 1).get_by_role("status")).to_have_text(re.compile("^Step "))
        start.click()
        expect(page.locator("#error")).to_contain_text("Try again when one is done.")
        # Enough steps for the logs to scroll: Tab must reach them, to scroll them.
        expect(cards.last.get_by_role("listitem").nth(8)).to_be_attached()
        check_accessibility(page)
        check_keyboard(page)
        save_picture(self.STEP, "job-refused.png", page.locator("main"))
        server.restart()
        lost = cards.first.get_by_role("alert")
        expect(lost).to_contain_text("This job was lost", timeout=RECONNECT_TIMEOUT)
        check_accessibility(page)
        save_picture(self.STEP, "job-lost.png", cards.first)

    def test_the_clock_pages_of_the_comparison_have_no_serious_violation(self, page, tmp_path):
        clock = ROOT / "steps" / self.STEP / "clock.py"
        with StepServer(self.STEP, tmp_path, command=[sys.executable, str(clock)]) as server:
            for path in ("/poll", "/sse"):
                page.goto(server.url + path)
                check_accessibility(page)
