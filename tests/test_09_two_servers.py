"""Step 09: one chat on two app servers. Alice and Bob on different servers over HTTP/2, presence
across them (read from Redis without a scan), a removal or a sign-out on one server reaching the
sockets on the other, an idle page that outlives nginx's read timeout, and a busy server that
refuses what it cannot take.

Through nginx, on the stack every test here shares (toolkit.fixtures.shared_stack), but the busy
server's test, which has a stack of its own.
"""

import http.client
import sqlite3
from urllib.parse import urlencode

import pytest
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.launcher import wait_until
from toolkit.pages import (
    no_reload,
    send_message,
    server_of,
    signed_up_through_nginx,
    sockets_closed,
    user_name,
)
from toolkit.people import (
    unique,
)
from toolkit.stack import TOOLS, Stack

IDLE_SECONDS = 6  # three times the shared stack's proxy_read_timeout
BUSY = "The server is busy: try again in a moment."

need_tools(*TOOLS)  # CI installs them (.ci/run)
pytestmark = pytest.mark.browser_context_args(ignore_https_errors=True)


@pytest.fixture
def stack(shared_stack):
    """Step 09's shared stack (toolkit.fixtures.shared_stack): one a process."""
    return shared_stack


@pytest.mark.e2e
def test_alice_and_bob_land_on_different_servers_and_chat_through_nginx_over_http_2(
    two_users, stack
):
    alice, bob = (signed_up_through_nginx(page, stack) for page in two_users)
    # least_conn in nginx.conf: Bob's socket goes to the server that has none open.
    assert {server_of(alice), server_of(bob)} == {"app1", "app2"}
    for page in (alice, bob):
        protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
    with no_reload(alice), no_reload(bob):
        send_message(alice, "hello <b>Bob</b>")
        expect(bob.locator("section.room[data-room='general'] li span")).to_have_text(
            ["hello <b>Bob</b>"]
        )
        send_message(bob, "hello Alice")
        for page in (alice, bob):
            expect(page.locator("section.room[data-room='general'] li span")).to_have_text(
                ["hello <b>Bob</b>", "hello Alice"]
            )
        # Each server tells its pages who is in the room on both servers.
        both = ", ".join(sorted([user_name(alice), user_name(bob)], key=str.lower))
        for page in (alice, bob):
            expect(page.locator("section.room[data-room='general'] .presence")).to_have_text(both)


@pytest.mark.e2e
def test_presence_reads_the_other_servers_people_without_scanning_redis(page, stack):
    def calls(command):
        return stack.redis().info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)

    signed_up_through_nginx(page, stack)  # in two rooms: presence reads both, five times a second
    scans, unions = calls("scan"), calls("sunion")
    wait_until(lambda: calls("sunion") >= unions + 20, "presence was read 20 times")
    assert calls("scan") == scans


@pytest.mark.e2e
def test_an_idle_page_stays_connected_longer_than_nginx_read_timeout(page, stack):
    closed = sockets_closed(page)
    signed_up_through_nginx(page, stack)
    server = server_of(page)
    # Nothing is sent for three times proxy_read_timeout (2 s here): only Engine.IO's pings, every
    # second, cross nginx. Time passing is what this test is about, so it waits.
    page.wait_for_timeout(IDLE_SECONDS * 1000)
    assert closed == []
    expect(page.locator("#status")).to_have_text("connected")
    assert server_of(page) == server


@pytest.mark.e2e
def test_removing_a_member_takes_their_socket_on_the_other_server_out_of_the_room(two_users, stack):
    alice, bob = (signed_up_through_nginx(page, stack) for page in two_users)
    room = unique("room")
    alice.get_by_label("Room name").fill(room)
    alice.get_by_role("button", name="Create room").click()
    members = alice.context.new_page()  # a page with no socket of its own
    members.goto(f"{stack.url}/rooms/{room}/members")
    members.get_by_label("Username").fill(user_name(bob))
    members.get_by_role("button", name="Add member").click()
    remove = members.locator(f"form:has(button[aria-label='Remove {user_name(bob)}'])")
    bob.reload()  # his page now lists the room, and his socket joins it
    for page in (alice, bob):
        expect(page.locator("#status")).to_have_text("connected")
    assert {server_of(alice), server_of(bob)} == {"app1", "app2"}
    post_to(stack, server_of(alice), members, remove.get_attribute("action"))
    alice.get_by_role("link", name=room).click()
    send_message(alice, "after Bob left")
    alice.get_by_role("link", name="general").click()
    send_message(alice, "to everyone")
    # Both came from Alice's server in this order: once Bob has the second, the first would have
    # come before it.
    expect(bob.locator("section.room[data-room='general'] li span").last).to_have_text(
        "to everyone"
    )
    expect(bob.locator(f"section.room[data-room='{room}'] li")).to_have_count(0)


@pytest.mark.e2e
def test_signing_out_in_one_tab_closes_the_tab_on_the_other_server(page, stack):
    first = signed_up_through_nginx(page, stack)
    second = page.context.new_page()
    second.goto(stack.url)
    expect(second.locator("#status")).to_have_text("connected")
    assert {server_of(first), server_of(second)} == {"app1", "app2"}
    post_to(stack, server_of(first), first, "/logout")
    expect(second.locator("#status")).to_have_text("signed out", timeout=1_000)


@pytest.mark.e2e
def test_a_busy_server_refuses_at_once_what_it_cannot_take_and_delivers_all_it_took(
    two_users, tmp_path
):
    # A line of one message on each server, and no rate limit per user: the server's is the point.
    with Stack("09_production", tmp_path, SEND_RATE=0, LINE=1) as stack:
        alice, bob = (signed_up_through_nginx(page, stack) for page in two_users)
        assert {server_of(alice), server_of(bob)} == {"app1", "app2"}
        box, error = alice.get_by_role("textbox", name="Message"), alice.locator("#error")
        with no_reload(alice), no_reload(bob):
            # Redis holds every write: the task that stores Alice's first message waits on its
            # publish, her second waits in line, and the line is full.
            stack.redis().execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:
                for n in range(1, 5):
                    box.fill(f"message {n}")
                    alice.get_by_role("button", name="Send").click()
                    if n <= 2:  # taken: the box empties
                        expect(box).to_have_value("")
                        expect(error).to_have_text("")
                    else:  # refused at once, and told to Alice alone; her text stays in the box
                        expect(error).to_have_text(BUSY)
                        expect(box).to_have_value(f"message {n}")
            finally:
                stack.redis().execute_command("CLIENT", "UNPAUSE")
            send_message(bob, "from Bob")
            expect(bob.locator("#error")).to_have_text("")
            # Every page gets every message taken, by id, and no other.
            for page in (alice, bob):
                items = page.locator("section.room[data-room='general'] li")
                expect(items.locator("span")).to_have_text(["message 1", "message 2", "from Bob"])
        with sqlite3.connect(stack.database) as database:
            stored = database.execute("SELECT id, text FROM messages ORDER BY id").fetchall()
        assert [text for _, text in stored] == ["message 1", "message 2", "from Bob"]
        for page in (alice, bob):
            ids = page.locator("section.room[data-room='general'] li").evaluate_all(
                "items => items.map(item => item.id)"
            )
            assert ids == [f"message-{id}" for id, _ in stored]


def post_to(stack, app, page, path):
    """Submit a form of `page` as its Sign out or Remove button does, straight to one app
    server: nginx could send it to either, and the test is about the one without the socket."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    (cookie,) = page.context.cookies()
    connection = http.client.HTTPConnection("127.0.0.1", stack.ports[app], timeout=10)
    body = urlencode({"csrf_token": token})
    headers = {
        "Cookie": f"{cookie['name']}={cookie['value']}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    connection.request("POST", path, body, headers)
    assert connection.getresponse().status == 302  # done: back to a page
