"""Step 09: stopping things. A rolling restart of both app servers loses and doubles no message, a
job whose server stops is shown as lost, and pages live through a Redis outage.

Each test has a stack of its own (it stops parts of it).
"""

import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.jobs import (
    start_job_in_page,
    steps_shown,
)
from toolkit.launcher import wait_until
from toolkit.pages import (
    RECONNECT_TIMEOUT,
    no_reload,
    send_message,
    server_of,
    signed_up_through_nginx,
    sockets_closed,
    user_name,
)
from toolkit.stack import TOOLS, Stack

STEP = "09_production"
LOST = "This job was lost: the server running it stopped before it finished. Start a new one."

need_tools(*TOOLS)  # CI installs them (.ci/run)
pytestmark = pytest.mark.browser_context_args(ignore_https_errors=True)


@pytest.fixture
def own_stack(tmp_path):
    """A stack for one test that stops some of it."""
    with Stack(STEP, tmp_path, SEND_RATE=0, HEARTBEAT=0.5) as stack:
        yield stack


@pytest.mark.e2e
def test_a_rolling_restart_loses_and_doubles_no_message(new_user, own_stack):
    alice, bob = (
        signed_up_through_nginx(new_user(), own_stack),
        signed_up_through_nginx(new_user(), own_stack),
    )
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
                people.append(signed_up_through_nginx(new_user(), own_stack))
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


def shown(page, room="general"):
    """The messages on the page in one room, in page order: [(id, text), ...]."""
    return page.locator(f"section.room[data-room='{room}'] li").evaluate_all(
        "items => items.map(li => [Number(li.dataset.id), li.querySelector('span').textContent])"
    )


def stored(stack, room="general"):
    with sqlite3.connect(f"file:{stack.database}?mode=ro", uri=True) as database:
        query = "SELECT id, text FROM messages WHERE room = ? ORDER BY id"
        return [list(row) for row in database.execute(query, (room,))]


@pytest.mark.e2e
def test_a_job_whose_server_stops_is_shown_as_lost(page, own_stack):
    signed_up_through_nginx(page, own_stack)
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
    alice, bob = (signed_up_through_nginx(page, own_stack) for page in two_users)
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
