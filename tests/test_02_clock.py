"""Step 02: the clock the server pushes into htmx 4, 2 and 1 pages over one /clock socket."""

import re
import time
from datetime import datetime
from html.parser import HTMLParser
from urllib.request import urlopen

import psutil
import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from toolkit.launcher import StepServer, wait_until
from toolkit.pages import RECONNECT_TIMEOUT, no_reload

INTERVAL = 0.2  # CLOCK_INTERVAL for the shared server: a tick five times a second
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
A_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
# Each page, the htmx major version it loads, the files it is allowed to load from vendor/, and
# the bytes of JavaScript they add up to (the table in the step's README.md).
PAGES = {
    "/": ("4", ["htmx.org/dist/htmx.min.js", "htmx.org/dist/ext/hx-ws.min.js"], 45_963),
    "/htmx2": ("2", ["htmx2/dist/htmx.min.js", "htmx-ext-ws/dist/ws.min.js"], 57_326),
    "/htmx1": ("1", ["htmx1/dist/htmx.min.js"], 48_101),
}

# Runs in the page before its own scripts: remembers the #clock the server rendered and how many
# milliseconds after DOMContentLoaded the first pushed #clock replaced it.
WATCH_FIRST_PUSH = """
document.addEventListener("DOMContentLoaded", () => {
  const rendered = document.getElementById("clock");
  const readyAt = performance.now();
  new MutationObserver((records, observer) => {
    if (document.getElementById("clock") !== rendered) {
      window.__firstPushAfterMs = performance.now() - readyAt;
      observer.disconnect();
    }
  }).observe(document.body, {childList: true, subtree: true});
});
"""


@pytest.fixture(scope="module")
def clock_server(tmp_path_factory):
    with StepServer("02_clock", tmp_path_factory.mktemp("logs"), CLOCK_INTERVAL=INTERVAL) as server:
        yield server


def clock(page):
    return page.get_by_role("timer", name="Server time")


def clocks_open(page):
    return page.get_by_role("status", name="Clocks open right now")


def open_clock_page(page, server, path="/"):
    """Open a page and wait until the server's first push has replaced the rendered clock."""
    page.add_init_script(WATCH_FIRST_PUSH)
    page.goto(server.url + path)
    page.wait_for_function("window.__firstPushAfterMs !== undefined", timeout=10_000)
    return page.evaluate("window.__firstPushAfterMs")


class Elements(HTMLParser):
    """Collects the top-level elements of an HTML fragment: tag, attributes and text."""

    def __init__(self, html):
        super().__init__()
        self.top, self.depth = [], 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            self.top.append({"tag": tag, "attrs": dict(attrs), "text": ""})
        self.depth += 1

    def handle_endtag(self, tag):
        self.depth -= 1

    def handle_data(self, data):
        if self.depth > 0:
            self.top[-1]["text"] += data

    def by_id(self):
        return {element["attrs"].get("id"): element for element in self.top}


class PageElements(HTMLParser):
    """Every element of a page with an id, as (tag, attribute names)."""

    def __init__(self, html):
        super().__init__()
        self.ids = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = (tag, sorted(attrs))


# --- in the browser ---


@pytest.mark.e2e
@pytest.mark.parametrize("path", PAGES)
def test_clock_shows_a_pushed_time_within_a_second_then_ticks_without_reload(
    page, clock_server, path
):
    first_push_after_ms = open_clock_page(page, clock_server, path)
    assert first_push_after_ms < 1000
    expect(clock(page)).to_have_text(A_TIME)
    first = clock(page).inner_text()
    with no_reload(page):
        expect(clock(page)).not_to_have_text(first, timeout=5_000)
        expect(clock(page)).to_have_text(A_TIME)
    assert clock(page).inner_text() > first  # the same format sorts like time


@pytest.mark.e2e
@pytest.mark.parametrize("path", PAGES)
def test_each_page_loads_only_its_own_htmx_generation(page, clock_server, path):
    major, vendor_files, _ = PAGES[path]
    loaded = []
    page.on("request", lambda request: loaded.append(request.url))
    open_clock_page(page, clock_server, path)
    assert page.evaluate("htmx.version").split(".")[0] == major
    vendor = f"{clock_server.url}/static/vendor/"
    assert [url.removeprefix(vendor) for url in loaded if url.startswith(vendor)] == vendor_files


@pytest.mark.e2e
@pytest.mark.parametrize("path", PAGES)
def test_each_page_downloads_the_javascript_the_readme_states(page, clock_server, path):
    """The measurement behind the README's table: bytes of script bodies the browser received."""
    *_, javascript_bytes = PAGES[path]
    open_clock_page(page, clock_server, path)
    downloaded = page.evaluate("""
        performance.getEntriesByType("resource")
          .filter((entry) => entry.initiatorType === "script")
          .reduce((sum, entry) => sum + entry.encodedBodySize, 0)
    """)
    assert downloaded == javascript_bytes, "the scripts changed: update the table in README.md"


@pytest.mark.e2e
def test_clocks_open_counts_every_page_and_drops_when_one_leaves(two_users, serve):
    server = serve("02_clock", CLOCK_INTERVAL=INTERVAL)
    alice, bob = two_users
    open_clock_page(alice, server, "/")
    expect(clocks_open(alice)).to_have_text("1")
    open_clock_page(bob, server, "/htmx1")
    expect(clocks_open(bob)).to_have_text("2")
    expect(clocks_open(alice)).to_have_text("2")
    bob.close()
    expect(clocks_open(alice)).to_have_text("1")


@pytest.mark.e2e
def test_closing_the_pages_ends_their_loops_and_threads(new_user, serve):
    server = serve("02_clock", CLOCK_INTERVAL=INTERVAL)
    process = psutil.Process(server.process.pid)
    baseline = process.num_threads()
    pages = [new_user() for _ in PAGES]
    for page, path in zip(pages, PAGES, strict=True):
        open_clock_page(page, server, path)
    expect(clocks_open(pages[-1])).to_have_text(str(len(pages)))
    # Flask-Sock serves each socket with two threads, the handler's loop and a reader, beside the
    # main thread. (Not baseline + 2 per page: the baseline may include a passing thread.)
    assert process.num_threads() >= 1 + 2 * len(pages)
    for page in pages:
        page.context.close()
    # "At most": the harness's start-up probe may still have held a thread when it was counted.
    wait_until(
        lambda: process.num_threads() <= baseline,
        f"the server is back to its {baseline} threads",
    )


@pytest.mark.e2e
def test_htmx4_ignores_the_htmx1_attribute_and_never_ticks(new_user, clock_server):
    mismatched = new_user()
    sockets = []
    mismatched.on("websocket", lambda ws: sockets.append(ws.url))
    mismatched.goto(clock_server.url + "/mismatch")
    assert mismatched.evaluate("htmx.version").startswith("4.")
    served_time = clock(mismatched).inner_text()
    # Meanwhile the real htmx 4 page, opened later on the same server, is pushed to and ticks...
    working = new_user()
    open_clock_page(working, clock_server, "/")
    pushed = clock(working).inner_text()
    expect(clock(working)).not_to_have_text(pushed, timeout=5_000)
    # ... while the mismatched page opened no socket and still shows the time it was served with.
    assert sockets == []
    expect(clock(mismatched)).to_have_text(served_time)
    assert served_time < clock(working).inner_text()


def restart_and_see_the_clock_resume(page, server):
    expect(clocks_open(page)).to_have_text("1")
    with no_reload(page):
        server.restart()
        stopped_at = clock(page).inner_text()
        # Only the new server can move the clock on now, and it counts this page again.
        expect(clock(page)).not_to_have_text(stopped_at, timeout=RECONNECT_TIMEOUT)
        expect(clocks_open(page)).to_have_text("1")


@pytest.mark.e2e
def test_htmx4_clock_resumes_after_a_restart_by_reconnecting_after_code_1006(page, serve):
    server = serve("02_clock", CLOCK_INTERVAL=INTERVAL)
    open_clock_page(page, server, "/")
    page.evaluate("""
        window.__closeCodes = [];
        document.addEventListener("htmx:ws:close", (event) => {
          window.__closeCodes.push(event.detail.code);
        });
    """)
    restart_and_see_the_clock_resume(page, server)
    assert set(page.evaluate("window.__closeCodes")) == {1006}  # retries while it was down, too


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/htmx2", "/htmx1"])
def test_older_htmx_clock_resumes_by_itself_after_a_server_restart(page, serve, path):
    server = serve("02_clock", CLOCK_INTERVAL=INTERVAL)
    open_clock_page(page, server, path)
    restart_and_see_the_clock_resume(page, server)


# --- fast tier: a Python WebSocket client against the same server ---


def test_socket_pushes_a_fragment_at_once_then_one_per_interval(serve):
    interval = 1.0  # long enough to tell "at once" from "after one interval"
    server = serve("02_clock", CLOCK_INTERVAL=interval)
    with connect(f"{server.ws_url}/clock") as ws:
        opened = time.monotonic()
        first = ws.recv(timeout=interval / 2)
        received_first = time.monotonic()
        second = ws.recv(timeout=5 * interval)
        received_second = time.monotonic()
    assert received_first - opened < interval / 2
    assert received_second - received_first > 0.8 * interval
    for message in first, second:
        elements = Elements(message).by_id()
        # At least these two: a widget of your own (exercise 02-2) travels in the same message.
        assert {"clock", "clocks-open"} <= set(elements)
        assert all(element["attrs"]["hx-swap-oob"] == "true" for element in elements.values())
        datetime.strptime(elements["clock"]["text"], TIME_FORMAT)  # raises if not a valid time
        assert elements["clocks-open"]["text"] == "1"


def test_page_renders_the_widgets_with_the_same_partials_the_socket_pushes(clock_server):
    with connect(f"{clock_server.ws_url}/clock") as ws:
        pushed = {
            element_id: (element["tag"], sorted(element["attrs"]))
            for element_id, element in Elements(ws.recv(timeout=5)).by_id().items()
        }
    for path in PAGES:
        page_ids = PageElements(urlopen(clock_server.url + path, timeout=5).read().decode()).ids
        assert {element_id: page_ids[element_id] for element_id in pushed} == pushed
