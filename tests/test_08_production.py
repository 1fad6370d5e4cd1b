"""Step 08: the chat and the job stream through a real nginx, over HTTPS and HTTP/2, on two gunicorn
servers sharing a real Redis; rolling restarts and a Redis outage; `make step-08` itself.

Every request goes through nginx (toolkit.stack.Stack starts the Procfile's processes on free
ports).
Browser contexts accept the self-signed certificate, as a learner does once in the browser.
"""

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import psutil
import pytest
import redis
from playwright.sync_api import expect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as open_websocket

from toolkit.clients import (
    QUEUE,
    SocketIOByHand,
    cut_by_server,
    frames_to_fill_the_kernel_buffers,
    tiny_buffer_socket,
    websocket_by_hand,
)
from toolkit.fixtures import need_tools
from toolkit.jobs import delays_through_nginx, https_connection, start_job_as
from toolkit.launcher import ROOT, free_port, path_with_only, wait_until
from toolkit.pages import RECONNECT_TIMEOUT, no_reload, send_message, sign_up_in_browser
from toolkit.people import (
    OK,
    FromAddress,
    create_room,
    csrf_token,
    messages_until,
    post_form,
    presence_until,
    send_to,
    session,
    sign_up,
    texts_of,
    unique,
    user_id,
)
from toolkit.stack import SHARED_SETTINGS, TOOLS, Stack

STEP = "08_production"

IDLE_SECONDS = 6  # three times the shared stack's proxy_read_timeout
REFUSED = '44{"message":"You are not signed in: sign in again."}'  # Socket.IO's connect error
LOST = "This job was lost: the server running it stopped before it finished. Start a new one."

need_tools(*TOOLS)  # CI installs them (.ci/run)


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "ignore_https_errors": True}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The whole stack, shared by the tests that stop nothing."""
    with Stack(STEP, tmp_path_factory.mktemp("stack"), **SHARED_SETTINGS) as shared:
        yield shared


@pytest.fixture
def own_stack(tmp_path):
    """A stack for one test that stops some of it."""
    with Stack(STEP, tmp_path, SEND_RATE=0, HEARTBEAT=0.5) as stack:
        yield stack


# --- in the browser ---


def signed_up(page, stack):
    """The page, signed up as a new user, its socket connected to one of the two app servers."""
    sign_up_in_browser(page, stack)
    expect(page.locator("#server")).to_have_text(re.compile(r"^app[12]$"))
    return page


def server_of(page):
    return page.locator("#server").text_content()


def shown(page, room="general"):
    """The messages on the page in one room, in page order: [(id, text), ...]."""
    return page.locator(f"section.room[data-room='{room}'] li").evaluate_all(
        "items => items.map(li => [Number(li.dataset.id), li.querySelector('span').textContent])"
    )


def stored(stack, room="general"):
    with sqlite3.connect(f"file:{stack.database}?mode=ro", uri=True) as database:
        query = "SELECT id, text FROM messages WHERE room = ? ORDER BY id"
        return [list(row) for row in database.execute(query, (room,))]


def sockets_closed(page):
    """A list that fills up with the URL of each WebSocket of the page that closes."""
    closed = []
    page.on("websocket", lambda ws: ws.on("close", lambda ws: closed.append(ws.url)))
    return closed


@pytest.mark.e2e
def test_alice_and_bob_land_on_different_servers_and_chat_through_nginx_over_http_2(
    two_users, stack
):
    alice, bob = (signed_up(page, stack) for page in two_users)
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


def user_name(page):
    return page.locator("header b").text_content()


@pytest.mark.e2e
def test_pages_load_nothing_from_elsewhere_run_no_inline_code_and_cookies_are_secure(page, stack):
    violations = []
    page.on("console", lambda message: violations.append(message.text))
    responses = []
    page.on("response", lambda response: responses.append(response))
    signed_up(page, stack)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("button", name="Start a job").click()
    expect(page.locator("article.job li").nth(1)).to_be_attached()
    assert not [text for text in violations if "Content Security Policy" in text]
    for response in responses:
        if response.request.resource_type == "document":
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy
            assert "unsafe" not in policy
    (cookie,) = page.context.cookies()
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Lax")


def test_plain_http_redirects_to_https_on_the_same_path(stack):
    connection = http.client.HTTPConnection("localhost", stack.http_port, timeout=10)
    connection.request("GET", "/jobs?x=1")
    response = connection.getresponse()
    assert response.status == 301
    assert response.headers["Location"] == f"{stack.url}/jobs?x=1"


def test_redis_answers_no_one_without_the_password(stack):
    intruder = redis.Redis(port=stack.ports["redis"], socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        intruder.pubsub().subscribe("flask-socketio")  # where every chat message passes
    assert stack.redis().ping()  # with the password from the instance folder


def test_nginx_hides_its_version_and_says_nosniff_and_same_origin_on_every_answer(stack):
    for path in ("/login", "/no-such-page"):
        response = session(stack).get(f"{stack.url}{path}")
        assert response.headers["Server"] == "nginx"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "form-action 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.e2e
def test_presence_reads_the_other_servers_people_without_scanning_redis(page, stack):
    def calls(command):
        return stack.redis().info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)

    signed_up(page, stack)  # in two rooms: presence reads both, five times a second
    scans, unions = calls("scan"), calls("sunion")
    wait_until(lambda: calls("sunion") >= unions + 20, "presence was read 20 times")
    assert calls("scan") == scans


def websocket_from(stack, address):
    """An Engine.IO WebSocket through nginx, from `address` (all of 127/8 is loopback)."""
    sock = socket.create_connection(("127.0.0.1", stack.https_port), source_address=(address, 0))
    return open_websocket(
        f"wss://localhost:{stack.https_port}/socket.io/?EIO=4&transport=websocket",
        sock=sock,
        ssl=ssl.create_default_context(cafile=stack.certificate),
        server_hostname="localhost",
        close_timeout=0.1,
        legacy=True,
    )


def test_one_address_gets_at_most_connections_per_address_sockets(stack):
    sockets = [
        websocket_from(stack, "127.0.0.7")
        for _ in range(SHARED_SETTINGS["CONNECTIONS_PER_ADDRESS"])
    ]
    try:
        with pytest.raises(InvalidStatus) as refused:
            websocket_from(stack, "127.0.0.7")
        assert refused.value.response.status_code == 429
        websocket_from(stack, "127.0.0.8").close()  # another address is not concerned
    finally:
        for websocket in sockets:
            websocket.close()


def test_nginx_answers_a_burst_of_sign_in_forms_from_one_address_with_429(stack):
    http = session(stack)
    http.mount("https://", FromAddress("127.0.0.9"))
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda _: http.post(f"{stack.url}/login"), range(30)))
    from_nginx = [a for a in answers if a.status_code == 429 and "<center>nginx</center>" in a.text]
    assert from_nginx, [answer.status_code for answer in answers]


# --- step 07's defences, attacked through nginx, on two servers sharing Redis ---


@pytest.mark.parametrize("event", ["disconnect", "connect"])
def test_an_event_named_disconnect_or_connect_hides_no_socket_from_either_server(
    stack, connect, event
):
    owner, bob, carol = (sign_up(stack, unique(prefix)) for prefix in "abc")  # names in order
    room = create_room(stack, owner, members=[bob, carol])
    observer = connect(stack, owner, rooms=[room, "general"])
    bob_socket = connect(stack, bob, rooms=[room, "general"])
    # 42["disconnect",...]: an event. The socket stays connected and in its rooms, so it must
    # stay in what its server and Redis know: presence lists it, and removal takes it out.
    bob_socket.emit(event, {"last_id": 0})
    connect(stack, carol, rooms=[room])
    presence_until(observer, room, [owner.name, bob.name, carol.name])
    # Whichever server nginx gives the removal to finds Bob's socket, in its memory or in Redis.
    post_form(owner.http, stack, f"/rooms/{room}/members/{user_id(stack, bob)}/remove")
    assert send_to(observer, room, "after bob left") == OK
    assert send_to(observer, "general", "to everyone") == OK
    assert "after bob left" not in texts_of(messages_until(bob_socket, "to everyone"))
    assert bob_socket.connect() == '44"Unable to connect"'  # python-socketio's own answer
    assert send_to(bob_socket, "general", "bob is still here") == OK


def test_connections_that_do_not_sign_in_are_closed_by_the_app_server_through_nginx(stack):
    refused = [SocketIOByHand(stack) for _ in range(2)]  # no cookie: 44, "sign in again"
    assert {client.answer for client in refused} == {REFUSED}
    silent = [websocket_from(stack, "127.0.0.1") for _ in range(2)]  # never even ask to connect
    opened = time.monotonic()
    # least_conn spreads them over both app servers; each closes its own after SIGN_IN_TIME. The
    # close frame is the app's, passed on by nginx: nginx itself closes without one (after
    # proxy_read_timeout, when a client does not answer the pings and the app goes quiet: so
    # each connection is read at once, in a thread of its own).
    deadline = opened + SHARED_SETTINGS["SIGN_IN_TIME"] + 5
    websockets = [client.ws for client in refused] + silent
    with ThreadPoolExecutor(len(websockets)) as pool:
        closed = list(
            pool.map(lambda websocket: closed_by_the_app(websocket, deadline), websockets)
        )
    assert closed == [True] * len(websockets)
    print(f"all closed {time.monotonic() - opened:.1f} s after they opened")


def closed_by_the_app(websocket, deadline):
    """Whether the app closes the Engine.IO connection before `deadline` (time.monotonic());
    meanwhile this reads it and answers the pings, as a client that holds on does."""
    try:
        while (left := deadline - time.monotonic()) > 0:
            if websocket.recv(timeout=left) == "2":
                websocket.send("3")
    except ConnectionClosed:
        return websocket.protocol.close_rcvd is not None
    except TimeoutError:
        pass
    return False


def test_a_connection_that_never_signs_in_and_ignores_the_close_is_cut_through_nginx(tmp_path):
    # A stack of its own, with nginx's default proxy_read_timeout (60 s), which would otherwise
    # end such a connection (the shared stack's 2 s would hide the app's cut). A client that
    # ignores the close packet and keeps its connection, silent, holds one of nginx's and one of
    # an app server's (a socket, its greenlets) until then.
    with Stack(STEP, tmp_path, SIGN_IN_TIME=1) as stack:
        clients = [websocket_by_hand(stack) for _ in range(4)]  # never even ask to connect
        received = [bytearray() for _ in clients]
        try:
            wait_until(lambda: all(map(cut_by_server, clients, received)), "the app cut them all")
            assert all(b"\x81\x011" in data for data in received)  # each was sent its close packet
        finally:
            for client in clients:
                client.close()


def test_a_last_id_too_big_for_sqlite_is_refused_and_the_largest_one_joins_in_plain_sight(
    stack, connect
):
    alice, mallory = sign_up(stack, unique("a")), sign_up(stack, unique("m"))  # names in order
    answer = SocketIOByHand(stack, mallory.cookie, {"last_id": 2**63}).answer
    assert answer == '44{"message":"auth.last_id must be a whole number, 0 or more."}'
    # The largest id SQLite holds is accepted: the join answers, presence lists the socket, and it
    # hears the room. (Step 08 joins before it reads the history, and leaves again if that fails.)
    room = create_room(stack, alice, members=[mallory])
    observer = connect(stack, alice, rooms=[room])
    mallory_socket = connect(stack, mallory, rooms=[room], last_id=2**63 - 1)
    presence_until(observer, room, [alice.name, mallory.name])
    assert send_to(observer, room, "hello") == OK
    assert texts_of(messages_until(mallory_socket, "hello")) == ["hello"]


def test_a_member_who_never_reads_is_dropped_through_nginx_and_their_queue_freed(stack, connect):
    sender, frozen = sign_up(stack), sign_up(stack)
    room = create_room(stack, sender, members=[frozen])
    sender_socket = connect(stack, sender)  # a member, not in the room: it reads only its acks
    frozen_socket = connect(
        stack,
        frozen,
        rooms=[room],
        sock=tiny_buffer_socket(stack.https_port, segment=536),
        max_queue=1,  # websockets stops reading the socket at the first unread packet
        ping_interval=None,  # nor does websockets close it for want of WebSocket pongs
    )  # It never reads again, but it sends a pong every second: Engine.IO's ping timeout, which
    # ends a client that does not answer, never ends this one. Only the bound can.
    pongs = threading.Thread(target=send_pongs, args=(frozen_socket.ws,), daemon=True)
    pongs.start()
    known_sockets = f"sockets:{user_id(stack, frozen)}"  # in Redis, for every server
    assert stack.redis().hlen(known_sockets) == 1
    text = "\U0001f600" * 490  # JSON escapes each as two \uXXXX: 6 kB a packet
    # Before the app's queue grows, the kernel's buffers fill on both hops: app to nginx (the
    # app's send buffer), nginx to the client (nginx's). On loopback each grows to megabytes
    # (measured: 2 and 2.8 MB, the member dropped after 1,260 messages); the client's small TCP
    # segments keep nginx's to tens of KB (dropped after 820). A small QUEUE would hardly shorten
    # it, so the stack keeps the default. At most: both hops' buffers, then the queue.
    most = 2 * frames_to_fill_the_kernel_buffers(6000) + QUEUE + 100
    started = time.monotonic()
    try:
        for sent in range(0, most, 20):
            for n in range(20):
                message = {"room": room, "text": f"{sent + n} {text}"}
                sender_socket.emit("send message", message, ack=True)
            sender_socket.answers(20)  # stored and sent out: the sender is never behind
            if not stack.redis().hlen(known_sockets):  # its server forgot it: it is gone
                break
        else:
            pytest.fail(f"{most} messages later, the frozen member is still there")
        print(f"dropped after {sent + 20} messages, {time.monotonic() - started:.1f} s")
    finally:
        frozen_socket.ws.socket.close()  # at once: a goodbye would wait behind what is unread
        pongs.join()


def send_pongs(websocket):
    """Answer Engine.IO's pings without reading them, once a second, until the socket closes."""
    with contextlib.suppress(ConnectionClosed, OSError):
        while True:
            websocket.send("3")
            time.sleep(SHARED_SETTINGS["PING_INTERVAL"])


# --- the job stream through nginx ---


def test_a_jobs_events_come_through_nginx_one_by_one_within_200_ms_of_being_produced(stack):
    delays = delays_through_nginx(stack, events=8)
    assert len(delays) >= 6, "fewer than 6 events were produced after the stream opened"
    assert max(delays.values()) < 0.2, delays
    slowest = max(delays.values()) * 1000
    print(f"{len(delays)} live events, the slowest {slowest:.0f} ms after Redis")


def test_one_user_runs_at_most_two_jobs_at_once_on_both_servers_and_others_still_can(stack):
    alice, bob = sign_up(stack), sign_up(stack)
    form = alice.http.get(f"{stack.url}/jobs")
    body = urlencode({"csrf_token": csrf_token(form.text)}).encode()
    headers = {
        "Cookie": alice.cookie,
        "Referer": form.url,
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": len(body),
    }
    # Eight POSTs that arrive together, as an attacker racing a check sends them: each on a
    # connection of its own, all but its last byte first, then the last bytes. nginx (least_conn)
    # hands them to both servers at once: a check that counts before it adds lets several through.
    connections = [https_connection(stack) for _ in range(8)]
    for connection in connections:
        connection.putrequest("POST", "/jobs")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body[:-1])
    for connection in connections:
        connection.send(body[-1:])
    answers = [connection.getresponse() for connection in connections]
    assert sorted(answer.status for answer in answers) == [201] * 2 + [429] * 6
    for answer in answers:
        if answer.status == 201:  # a job id of 128 bits: no one finds it by trying ids
            assert re.fullmatch(r"/jobs/[0-9a-f]{32}", urlsplit(answer.getheader("Location")).path)
        else:
            assert b"You have 2 jobs running, as many as one person runs at once." in answer.read()
    for connection in connections:
        connection.close()
    start_job_as(bob, stack)


def test_either_app_server_streams_a_job_whichever_server_runs_it(stack):
    user = sign_up(stack, unique("jobs"))
    job = start_job_as(user, stack)
    streams = []
    for app in ("app1", "app2"):  # straight to each app server, without nginx
        connection = http.client.HTTPConnection("127.0.0.1", stack.ports[app], timeout=10)
        connection.request("GET", f"/jobs/{job}/events", headers={"Cookie": user.cookie})
        response = connection.getresponse()
        assert response.status == 200
        text = ""
        while text.count("\nid: ") < 3:
            text += response.read1().decode()
        connection.close()
        # The same events, without the heartbeat a stream may begin with.
        streams.append(re.sub(r"^: heartbeat\n\n", "", text, flags=re.MULTILINE).split("id: 4")[0])
    assert re.findall(r"^id: (\d+)$", streams[0], re.MULTILINE)[:3] == ["1", "2", "3"]
    assert streams[0] == streams[1]


def start_job_in_page(page, stack):
    page.goto(f"{stack.url}/jobs")
    page.get_by_role("button", name="Start a job").click()
    return page.get_by_role("link", name="Follow this job in another tab").get_attribute("href")


def steps_shown(page):
    return page.locator("article.job li")


def expect_progress(pages, steps=3):
    """Each page's job log gains `steps` more steps (0.2 s each), all pages at the same time."""
    counts = [steps_shown(page).count() for page in pages]
    for page, count in zip(pages, counts, strict=True):
        expect(steps_shown(page).nth(count + steps - 1)).to_be_attached()


@pytest.mark.e2e
def test_ten_pages_of_one_browser_follow_a_job_at_once_over_http_2(page, stack):
    signed_up(page, stack)
    job_url = start_job_in_page(page, stack)
    pages = [page, *(page.context.new_page() for _ in range(9))]
    for other in pages[1:]:
        other.goto(f"{stack.url}{job_url}")
    for each in pages:
        protocol = each.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
    # Ten streams open at once, over one connection, and every one of them flows.
    expect_progress(pages)


@pytest.fixture
def http_1_1_browser(browser_type, browser_type_launch_args):
    """A Chromium that does not speak HTTP/2, to compare."""
    args = [*browser_type_launch_args.get("args", []), "--disable-http2"]
    browser = browser_type.launch(**{**browser_type_launch_args, "args": args})
    yield browser
    browser.close()


@pytest.mark.e2e
def test_over_http_1_1_a_seventh_page_gets_nothing_while_six_follow_a_job(http_1_1_browser, stack):
    context = http_1_1_browser.new_context(ignore_https_errors=True)
    first = context.new_page()
    signed_up(first, stack)
    job_url = start_job_in_page(first, stack)
    pages = [first, *(context.new_page() for _ in range(6))]
    for other in pages[1:6]:
        other.goto(f"{stack.url}{job_url}")
    assert first.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == (
        "http/1.1"
    )
    seventh = pages[6]
    seventh.evaluate(f"location.href = {stack.url + job_url!r}")  # starts it; does not wait
    # While six streams flow, the seventh page waits for a free connection: not even its page
    # has reached nginx.
    expect_progress(pages[:6])
    assert stack.output("nginx").count(f"GET {job_url} ") == 5
    pages[0].close()
    expect_progress([seventh])
    context.close()


@pytest.mark.e2e
def test_an_idle_page_stays_connected_longer_than_nginx_read_timeout(page, stack):
    closed = sockets_closed(page)
    signed_up(page, stack)
    server = server_of(page)
    # Nothing is sent for three times proxy_read_timeout (2 s here): only Engine.IO's pings, every
    # second, cross nginx. Time passing is what this test is about, so it waits.
    page.wait_for_timeout(IDLE_SECONDS * 1000)
    assert closed == []
    expect(page.locator("#status")).to_have_text("connected")
    assert server_of(page) == server


@pytest.mark.e2e
def test_removing_a_member_takes_their_socket_on_the_other_server_out_of_the_room(two_users, stack):
    alice, bob = (signed_up(page, stack) for page in two_users)
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
    first = signed_up(page, stack)
    second = page.context.new_page()
    second.goto(stack.url)
    expect(second.locator("#status")).to_have_text("connected")
    assert {server_of(first), server_of(second)} == {"app1", "app2"}
    post_to(stack, server_of(first), first, "/logout")
    expect(second.locator("#status")).to_have_text("signed out", timeout=1_000)


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


# --- stopping things ---


@pytest.mark.e2e
def test_a_rolling_restart_loses_and_doubles_no_message(new_user, own_stack):
    alice, bob = signed_up(new_user(), own_stack), signed_up(new_user(), own_stack)
    assert {server_of(alice), server_of(bob)} == {"app1", "app2"}
    people, sent = [alice, bob], []

    def say(page, what):
        sent.append(f"{what}: {user_name(page)} says {len(sent)}")
        send_message(page, sent[-1])

    def back(page, victim):
        return server_of(page) != victim and status_of(page) == "connected"

    with ThreadPoolExecutor(1) as stopper:
        for victim in (server_of(alice), server_of(bob)):
            moving = [page for page in people if server_of(page) == victim]
            staying = [page for page in people if page not in moving]
            # Stopped gracefully (SIGTERM): it accepts nothing new, serves its sockets for
            # gunicorn's graceful_timeout, then cuts them. Its pages reconnect through nginx,
            # to the other server. Meanwhile the others keep chatting; what they say while a
            # page is away reaches it after its reconnect, from the database.
            stopping = stopper.submit(own_stack.stop, victim)
            started = time.monotonic()
            for page in moving:
                say(page, f"{victim} stopping")
            said_while_away = 0
            while not (stopping.done() and all(back(page, victim) for page in moving)):
                away = all(status_of(page) != "connected" for page in moving)
                for page in staying:
                    say(page, f"{victim} stopping")
                    said_while_away += away
            assert said_while_away, "nobody spoke while the pages were away"
            print(
                f"{victim} stopped in {stopping.result():.1f} s; its pages were back on the other "
                f"server {time.monotonic() - started:.1f} s after the SIGTERM"
            )
            for page in people:
                say(page, f"{victim} stopped")
            own_stack.start(victim)
            # Carol comes in now: least_conn puts her on the server just restarted, so that she
            # is the one who stays while the other server stops.
            if len(people) == 2:
                people.append(signed_up(new_user(), own_stack))
                assert server_of(people[-1]) == victim
    # Every message once, in the order of its id, on every page and in the database; no page
    # was reloaded.
    assert [text for _, text in stored(own_stack)] == sent
    print(f"{len(sent)} messages, each shown once on each of {len(people)} pages")
    for page in people:
        expect(page.locator("section.room[data-room='general'] li")).to_have_count(len(sent))
        assert shown(page) == stored(own_stack)
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def status_of(page):
    return page.locator("#status").text_content()


@pytest.mark.e2e
def test_a_job_whose_server_stops_is_shown_as_lost(page, own_stack):
    signed_up(page, own_stack)
    start_job_in_page(page, own_stack)
    card = page.locator("article.job")
    expect(steps_shown(page).first).to_be_attached()
    # nginx's log says which app server took the POST, and so runs the job.
    (port,) = re.findall(
        r'"POST /jobs HTTP/2.0" 201 HTTP/2.0 -> 127.0.0.1:(\d+)', own_stack.output("nginx")
    )
    runner = next(app for app in ("app1", "app2") if own_stack.ports[app] == int(port))
    own_stack.stop(runner)
    # Its keys expire a few seconds after its last step; the stream then ends, and the
    # reconnect gets 404.
    expect(card.get_by_role("alert")).to_have_text(LOST, timeout=RECONNECT_TIMEOUT)
    expect(card.get_by_role("status")).not_to_have_text("Done")


@pytest.mark.e2e
def test_when_redis_stops_pages_stay_connected_and_then_chat_across_servers_again(
    two_users, own_stack
):
    alice, bob = (signed_up(page, own_stack) for page in two_users)
    assert {server_of(alice), server_of(bob)} == {"app1", "app2"}
    closed = [sockets_closed(page) for page in (alice, bob)]
    send_message(alice, "before")
    expect(bob.locator("section.room[data-room='general'] li span")).to_have_text(["before"])
    with no_reload(alice), no_reload(bob):
        own_stack.stop("redis")
        # The sockets go to the app servers, not to Redis: both pages stay connected, and a
        # message reaches the pages of its own server.
        send_message(alice, "during")
        expect(alice.locator("section.room[data-room='general'] li span")).to_have_text(
            ["before", "during"]
        )
        # Each server now knows only its own people; jobs, which live in Redis, are refused.
        for page in (alice, bob):
            expect(page.locator("section.room[data-room='general'] .presence")).to_have_text(
                user_name(page)
            )
        jobs = alice.context.request
        assert jobs.get(f"{own_stack.url}/jobs/{'0badcafe' * 4}/events").status == 503
        token = alice.locator("input[name=csrf_token]").first.get_attribute("value")
        headers = {"Referer": f"{own_stack.url}/jobs"}
        answer = jobs.post(f"{own_stack.url}/jobs", form={"csrf_token": token}, headers=headers)
        assert answer.status == 503
        back = time.monotonic()
        own_stack.start("redis")  # an empty Redis: this one keeps nothing on disk
        # Each app server's listener subscribes again after 1, 2, 4 ... s (python-socketio).
        wait_until(lambda: own_stack.subscribers() == 2, "both servers listen again", 30)
        print(f"cross-server delivery resumed {time.monotonic() - back:.1f} s after Redis")
        send_message(bob, "after")
        # What Alice sent during the outage never reached Bob's server (pub/sub keeps nothing).
        for page, seen in ((alice, ["before", "during", "after"]), (bob, ["before", "after"])):
            expect(page.locator("section.room[data-room='general'] li span")).to_have_text(seen)
            expect(page.locator("#status")).to_have_text("connected")
    assert closed == [[], []]
    bob.reload()  # the database has it all
    expect(bob.locator("section.room[data-room='general'] li span")).to_have_text(
        ["before", "during", "after"]
    )


# --- make step-08 ---


def test_make_step_08_without_nginx_says_what_to_install_and_installs_nothing(tmp_path):
    # A PATH with what make itself needs, and none of nginx, openssl, redis-server.
    tools = path_with_only(tmp_path / "bin", "sh", "install", "mkdir", "touch", "env")
    done = subprocess.run(
        [shutil.which("make"), "-s", "step-08", f"REDIS_URL=redis://127.0.0.1:{free_port()}/0"],
        cwd=ROOT,
        env={**os.environ, "PATH": tools},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "this machine lacks: nginx openssl redis-server" in done.stderr
    assert "sudo apt-get install nginx openssl redis-server" in done.stderr
    assert "brew install nginx openssl redis" in done.stderr


@pytest.mark.e2e
def test_make_step_08_serves_https_with_http_2_and_ctrl_c_stops_everything(page, tmp_path):
    https_port = free_port()
    run = subprocess.Popen(
        [
            "make",
            "-s",
            "step-08",
            f"HTTPS_PORT={https_port}",
            f"HTTP_PORT={free_port()}",
            f"REDIS_URL=redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=(tmp_path / "make.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    output = lambda: (tmp_path / "make.log").read_text(errors="replace")  # noqa: E731
    children = []
    try:
        wait_until(lambda: output().count("Booting worker") == 2, "two app servers start", 60)
        assert f"open https://localhost:{https_port}/" in output()
        assert "starting a private one" in output()
        children = psutil.Process(run.pid).children(recursive=True)
        assert {"redis-server", "gunicorn", "nginx"} <= {child.name() for child in children}
        page.goto(f"https://localhost:{https_port}/")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert run.wait(timeout=30) in (0, -signal.SIGINT)  # as in step 05's test
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        assert "Traceback" not in output()
    finally:
        for process in [run, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
