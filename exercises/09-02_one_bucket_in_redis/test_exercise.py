"""Exercise 09-02: a user's tabs on both app servers draw from one rate-limit bucket, in Redis."""

import time
from types import SimpleNamespace

import pytest

from toolkit.clients import SocketIOByHand
from toolkit.people import sign_up
from toolkit.stack import Stack

OK = {"ok": True}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """Step 09's stack with a rate limit: 10 messages at once, then 1 a second (per user)."""
    with Stack(
        "09_production", tmp_path_factory.mktemp("limited"), SEND_BURST=10, SEND_RATE=1
    ) as stack:
        yield stack


def socket_on(stack, server, person):
    """A socket of `person` on one app server, straight to it (nginx would pick either)."""
    app_server = SimpleNamespace(ws_url=f"ws://127.0.0.1:{stack.ports[server]}")
    socket = SocketIOByHand(app_server, person.cookie, {"last_id": 0})
    assert socket.answer.startswith('40{"sid"'), socket.answer
    assert socket.next_event("server") == {"name": server}
    return socket


def test_a_users_tabs_on_both_servers_share_one_bucket(limited):
    alice = sign_up(limited)
    tabs = [socket_on(limited, server, alice) for server in ("app1", "app2")]
    try:
        started = time.monotonic()
        for n in range(30):
            for tab in tabs:
                tab.emit("send message", {"room": "general", "text": f"flood {n}"}, ack=True)
        answers = [answer for tab in tabs for answer in tab.answers(30).values()]
        elapsed = time.monotonic() - started
        # One bucket for both servers: 10 at once, then 1 a second. One per server lets 20 by.
        assert 10 <= answers.count(OK) <= 10 + elapsed + 1, f"{answers.count(OK)} accepted"
    finally:
        for tab in tabs:
            tab.close()
