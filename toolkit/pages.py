"""In the browser: what the tests check on a page (that it changed without a reload, that it
fetched nothing from another origin), and what people do on the pages of steps 07 to 09 (sign
up, sign in, sign out, send a message)."""

import re
from contextlib import contextmanager
from urllib.parse import urlsplit

from playwright.sync_api import expect

from toolkit.people import PASSWORD, rows, unique

# How long a page may take to come back after a server restart (ms, for Playwright): the server
# starts in a second or two on a loaded machine, and the client library backs off between tries.
RECONNECT_TIMEOUT = 20_000
XSS = "<img src=x onerror=alert(1)>"  # text that runs a script if a page takes it for HTML


@contextmanager
def no_reload(page):
    """Prove that what happens inside the block changes the page in place, without a reload.

    A reload would drop the marker set on `window`, fire another `load` event and start a new
    document. (Counting navigations does not work: htmx 4 calls history.replaceState.)
    """
    page.evaluate("window.__marker = 'first load'")
    loads = []

    def count_load(loaded_page):
        loads.append(loaded_page)

    page.on("load", count_load)
    try:
        yield
    finally:
        page.remove_listener("load", count_load)
    assert page.evaluate("window.__marker") == "first load", "the page was reloaded"
    assert not loads, "a new load event fired"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


class OriginGuard:
    """Record every request or WebSocket a browser context opens outside its page's own origin."""

    def __init__(self, context):
        self.foreign: list[str] = []
        context.on("request", self._on_request)
        context.on("page", lambda page: page.on("websocket", lambda ws: self._check(page, ws.url)))

    def _on_request(self, request):
        # The test's own page.goto is a navigation; everything else the page asked for itself.
        if not request.is_navigation_request():
            self._check(request.frame.page, request.url)

    def _check(self, page, url: str) -> None:
        if urlsplit(url).scheme in ("data", "blob"):
            return
        if origin(url) != origin(page.url):
            self.foreign.append(f"{page.url} fetched {url}")


# --- people on the pages of steps 07 to 09 ---


def sign_up_in_browser(page, server, name=None):
    """Sign up on the page, which lands on the chat, and wait until its socket is connected."""
    name = name or unique("user")
    page.goto(f"{server.url}/signup")
    fill_in_the_form(page, name)
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#status")).to_have_text("connected")
    return name


def sign_in_in_browser(page, server, name):
    page.goto(f"{server.url}/login")
    fill_in_the_form(page, name)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#status")).to_have_text("connected")


def fill_in_the_form(page, name):
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(PASSWORD)


def sign_out_in_browser(page):
    page.get_by_role("button", name="Sign out").click()


def send_message(page, text):
    """Send a message from the chat page and wait for the server's acknowledgement: the box
    empties then (after a reconnect, if the page is between two)."""
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    page.get_by_role("button", name="Send").click()
    expect(box).to_have_value("", timeout=RECONNECT_TIMEOUT)


def enter(page, room):
    # The link's name starts with the room's: exercise 07-02 adds its unread count after it.
    link = re.compile(rf"^{re.escape(room)}\b")
    page.get_by_role("navigation", name="Rooms").get_by_role("link", name=link).click()
    expect(page.get_by_role("heading", name=room, exact=True)).to_be_visible()


def log(page, room):
    return page.get_by_role("log", name=f"Messages in {room}")


def create_room_in(page, members=()):
    """Create a private room from the chat page, add members on its page, and come back."""
    room = unique("plans")
    page.get_by_label("Room name").fill(room)
    page.get_by_role("button", name="Create room").click()
    expect(page.get_by_role("heading", name=room)).to_be_visible()
    page.get_by_role("link", name="Members").click()
    for member in members:
        page.get_by_label("Username").fill(member)
        page.get_by_role("button", name="Add member").click()
        expect(page.get_by_role("listitem").filter(has_text=member)).to_be_visible()
    page.get_by_role("link", name=f"Back to {room}").click()
    expect(page.locator("#status")).to_have_text("connected")
    return room


def shown_ids(page, room):
    """The ids of the messages the page shows in a room, in page order."""
    return page.locator(f"section[data-room='{room}'] li").evaluate_all(
        "items => items.map((item) => Number(item.dataset.id))"
    )


def expect_every_message_once_in_id_order(server, page, room):
    """The page's log holds exactly the room's messages in the database, in id order."""
    stored = [row[0] for row in rows(server, "SELECT id FROM messages WHERE room = ?", room)]
    expect(log(page, room).get_by_role("listitem")).to_have_count(len(stored))
    assert shown_ids(page, room) == stored


# --- on step 09's stack: two app servers behind nginx ---


def signed_up_through_nginx(page, stack):
    """The page, signed up as a new user, its socket connected to one of the two app servers."""
    sign_up_in_browser(page, stack)
    expect(page.locator("#server")).to_have_text(re.compile(r"^app[12]$"))
    return page


def server_of(page):
    """The app server the page's socket is connected to: app1 or app2."""
    return page.locator("#server").text_content()


def user_name(page):
    return page.locator("header b").text_content()


def sockets_closed(page):
    """A list that fills up with the URL of each WebSocket of the page that closes."""
    closed = []
    page.on("websocket", lambda ws: ws.on("close", lambda ws: closed.append(ws.url)))
    return closed
