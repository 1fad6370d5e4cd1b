"""Step 09: what nginx does in front, tested through it: HTTPS (plain HTTP redirected), headers
that say little, a Content-Security-Policy and secure cookies in the browser, a Redis that asks for
its password, and limits per address at the edge.

Every request goes through nginx, on the stack every test here shares (toolkit.fixtures.
shared_stack). Browser contexts accept the self-signed certificate, as a learner does once.
"""

import http.client
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from playwright.sync_api import expect
from websockets.exceptions import InvalidStatus

from toolkit.fixtures import need_tools
from toolkit.pages import (
    signed_up_through_nginx,
)
from toolkit.people import (
    FromAddress,
    session,
)
from toolkit.stack import SHARED_SETTINGS, TOOLS, websocket_from

need_tools(*TOOLS)  # CI installs them (.ci/run)
pytestmark = pytest.mark.browser_context_args(ignore_https_errors=True)


@pytest.fixture
def stack(shared_stack):
    """Step 09's shared stack (toolkit.fixtures.shared_stack): one a process."""
    return shared_stack


@pytest.mark.e2e
def test_pages_load_nothing_from_elsewhere_run_no_inline_code_and_cookies_are_secure(page, stack):
    violations = []
    page.on("console", lambda message: violations.append(message.text))
    responses = []
    page.on("response", lambda response: responses.append(response))
    signed_up_through_nginx(page, stack)
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
