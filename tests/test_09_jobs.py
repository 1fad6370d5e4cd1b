"""Step 09: step 06's jobs through nginx. Events one by one (nginx buffers nothing), at most two
jobs per user across both servers, either server streaming any job (their events are in Redis),
and ten pages of one browser over HTTP/2 where HTTP/1.1 would serve six.

Through nginx, on the stack every test here shares (toolkit.fixtures.shared_stack).
"""

import http.client
import re
from urllib.parse import urlencode, urlsplit

import pytest

from toolkit.fixtures import need_tools
from toolkit.jobs import (
    delays_through_nginx,
    expect_progress,
    https_connection,
    start_job_as,
    start_job_in_page,
)
from toolkit.pages import (
    signed_up_through_nginx,
)
from toolkit.people import (
    csrf_token,
    sign_up,
    unique,
)
from toolkit.stack import TOOLS

need_tools(*TOOLS)  # CI installs them (.ci/run)
pytestmark = pytest.mark.browser_context_args(ignore_https_errors=True)


@pytest.fixture
def stack(shared_stack):
    """Step 09's shared stack (toolkit.fixtures.shared_stack): one a process."""
    return shared_stack


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


@pytest.mark.e2e
def test_ten_pages_of_one_browser_follow_a_job_at_once_over_http_2(page, stack):
    signed_up_through_nginx(page, stack)
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
    signed_up_through_nginx(first, stack)
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
