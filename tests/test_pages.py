"""Every step's pages in the states a learner should see, in a real browser, as pictures.

Each test drives a step's pages into their states (empty, with messages, with an error shown) and
checks each state with axe-core (no serious or critical accessibility violation) and with the
keyboard alone (Tab reaches every link, button and field, each with a visible focus ring; a
message is sent with Tab, typing and Enter). `make pictures` sets PICTURES=1: the tests then also
photograph the states into steps/NN_*/pictures/, for the step's README. Without it they reach and
check every state and write nothing. A picture shows no focus ring (the focus leaves the page
before each shot), and one that shows two pages side by side shows them at TWO_PAGES_WIDTH, so
that the picture stays under 1,000 pixels wide (tests/test_pictures.py).
"""

import io
import os
import re
import sys
from contextlib import ExitStack
from datetime import datetime, timedelta

import pytest
from PIL import Image
from playwright.sync_api import expect

from toolkit.clients import announce, messages, online_count, open_chat, say
from toolkit.fixtures import need_tools
from toolkit.launcher import ROOT, RedisServer, StepServer, start_side_by_side
from toolkit.pages import RECONNECT_TIMEOUT, no_reload, sign_up_in_browser
from toolkit.stack import TOOLS, Stack

pytestmark = pytest.mark.e2e  # every test here drives a browser

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
PICTURES = os.environ.get("PICTURES") == "1"
MARGIN = 12  # pixels of white around a picture, and between its parts
TWO_PAGES_WIDTH = 480  # pixels: the viewport of each page a picture shows beside another
CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S"
FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea"


# --- what every state is checked for ---


def accessibility_problems(page) -> list[str]:
    """The serious and critical violations axe-core finds in the page as it is now."""
    if not page.evaluate("typeof axe === 'object'"):
        page.add_script_tag(path=AXE)
    return page.evaluate("""async () => {
        const found = await axe.run({ resultTypes: ["violations"] });
        return found.violations
            .filter((problem) => ["serious", "critical"].includes(problem.impact))
            .map((problem) => `${problem.impact} ${problem.id}: ${problem.help}, at `
                + problem.nodes.map((node) => node.target.join(" ")).join(", "));
    }""")


def check_accessibility(page) -> None:
    problems = accessibility_problems(page)
    assert not problems, f"axe-core on {page.url}:\n" + "\n".join(problems)


def check_keyboard(page) -> None:
    """Tab reaches every link, button and field on screen, and each shows a focus ring."""
    controls = page.locator(FOCUSABLE).filter(visible=True)
    for _ in range(2 * controls.count() + 2):  # round the page once, from wherever it starts
        page.keyboard.press("Tab")
        ring, unreached = page.evaluate(
            """(selector) => {
                const focused = document.activeElement;
                focused.dataset.reached = "";
                const style = getComputedStyle(focused);
                const ring = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
                const shown = { visibilityProperty: true };
                const unreached = [...document.querySelectorAll(selector)].filter(
                    (control) => !("reached" in control.dataset) && control.checkVisibility(shown));
                return [focused === document.body || ring, unreached.length];
            }""",
            FOCUSABLE,
        )
        assert ring, "the focused element shows no focus ring"
        if not unreached:
            return
    raise AssertionError("Tab never reached some controls")


def tab_to(page, control) -> None:
    """Press Tab until `control` has the focus, as someone without a mouse does."""
    for _ in range(20):
        if control.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError("Tab never reached the control")


def type_into(page, field, text, then="Enter") -> None:
    tab_to(page, field)
    page.keyboard.insert_text(text)  # as typing does, in one go
    page.keyboard.press(then)


# --- pictures, taken only when asked for ---


def a_second_after(shown: str) -> str:
    """The clock's text one second after `shown` (steps 02 and 04 show YYYY-MM-DD HH:MM:SS)."""
    then = datetime.strptime(shown, CLOCK_FORMAT) + timedelta(seconds=1)
    return then.strftime(CLOCK_FORMAT)


def page_of(part):
    return getattr(part, "page", part)  # a locator has its page; a page is one


def side_by_side(*pages) -> None:
    """Give pages that a picture shows side by side the width that keeps it small."""
    for page in pages:
        page.set_viewport_size({"width": TWO_PAGES_WIDTH, "height": 720})


def shoot(*parts) -> Image.Image:
    """Screenshots of the parts (pages or locators), side by side, with white all round. The
    focus leaves each page first: a focus ring in a picture would say the focus matters."""
    for part in parts:
        page_of(part).evaluate("document.activeElement && document.activeElement.blur()")
    shots = [Image.open(io.BytesIO(part.screenshot(animations="disabled"))) for part in parts]
    width = sum(shot.width + MARGIN for shot in shots) + MARGIN
    whole = Image.new("RGB", (width, max(shot.height for shot in shots) + 2 * MARGIN), "white")
    left = MARGIN
    for shot in shots:
        whole.paste(shot, (left, MARGIN))
        left += shot.width + MARGIN
    return whole


def picture_path(step, name) -> str:
    folder = ROOT / "steps" / step / "pictures"
    folder.mkdir(exist_ok=True)
    return str(folder / name)


def save_picture(step, name, *parts) -> None:
    """steps/<step>/pictures/<name>: the parts side by side, in 64 colours (a small file)."""
    if PICTURES:
        shoot(*parts).quantize(64).save(picture_path(step, name), optimize=True)


class Film:
    """The frames of an animated picture."""

    def __init__(self):
        self.frames = []

    def shoot(self, *parts) -> None:
        if PICTURES:
            self.frames.append(shoot(*parts))

    def save(self, step, name, milliseconds_per_frame) -> None:
        """An animated GIF; every frame on a canvas the size of the largest one."""
        if PICTURES:
            size = max(f.width for f in self.frames), max(f.height for f in self.frames)
            frames = []
            for frame in self.frames:
                canvas = Image.new("RGB", size, "white")
                canvas.paste(frame)
                frames.append(canvas.quantize(64))
            first, *rest = frames
            first.save(
                picture_path(step, name),
                save_all=True,
                append_images=rest,
                duration=milliseconds_per_frame,
                loop=0,
                optimize=True,
            )


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


def follow_to_done(card) -> Film:
    """Follow a job's card until its status line says Done, shooting a frame at each change.

    A screen reader reads a live region out when its text changes, not when the element is
    replaced by a new one: the line must be the same element all along.
    """
    status = card.get_by_role("status")
    status.evaluate("line => { line.stays = true; }")
    film = Film()
    while (shown := status.text_content()) != "Done":
        film.shoot(card)
        expect(status).not_to_have_text(shown)
    film.shoot(card)
    assert status.evaluate("line => line.stays"), "the status line was replaced"
    return film


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


def message_box(page):
    """Steps 07 to 09: the message field (whose label starts each log's name, hence exact)."""
    return page.get_by_label("Message", exact=True)


def room_log(page, room):
    return page.get_by_role("log", name=f"Messages in {room}")


def check_bad_sign_up_is_answered_on_the_form(page, server):
    page.goto(f"{server.url}/signup")
    check_accessibility(page)
    check_keyboard(page)
    type_into(page, page.get_by_label("Username"), "bob the builder", then="Tab")
    type_into(page, page.get_by_label("Password"), "correct horse")
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    check_accessibility(page)


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
        expect(room_log(alice, "general").get_by_role("listitem")).to_have_count(2)
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


# Step 08's pages are step 07's, its Content-Security-Policy aside, which allows no inline script:
# bypassed to inject axe-core.
@pytest.mark.browser_context_args(bypass_csp=True)
class TestStep08UnderAttack(TestStep07RoomsAndLogins):
    STEP = "08_under_attack"


@pytest.fixture(scope="class")
def stack(tmp_path_factory):
    """Step 09's stack, as its own tests start it (and skip it without nginx or Redis)."""
    need_tools(*TOOLS)
    settings = {"JOB_STEPS": 4, "JOB_STEP_SECONDS": 0.5, "MAX_JOBS": 1, "SEND_RATE": 0}
    with Stack("09_production", tmp_path_factory.mktemp("09_production"), **settings) as stack:
        yield stack


def app_server(page):
    server = page.locator("#server")
    expect(server).to_have_text(re.compile("^app[12]$"))
    return server.text_content()


# Step 09's Content-Security-Policy allows no inline script: these contexts bypass it to inject
# axe-core (the pages still send it), and accept the self-signed certificate.
@pytest.mark.browser_context_args(ignore_https_errors=True, bypass_csp=True)
class TestStep09Production:
    STEP = "09_production"

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
            expect(room_log(page, "general").get_by_role("listitem")).to_have_count(2)
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
        follow_to_done(page.locator("article.job"))
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
