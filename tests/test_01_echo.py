"""Step 01: the echo page and the /echo socket behind it."""

import pytest
from playwright.sync_api import expect
from simple_websocket import Client, ConnectionClosed
from websockets.sync.client import connect

from toolkit.launcher import StepServer
from toolkit.pages import no_reload

MAX_MESSAGE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    with StepServer("01_echo", tmp_path_factory.mktemp("logs")) as server:
        yield server


def open_echo_page(page, server):
    page.goto(server.url)
    expect(page.locator("#status")).to_have_text("open")


# --- in the browser ---


@pytest.mark.e2e
def test_typed_message_comes_back_into_the_log_without_reload(page, echo_server):
    open_echo_page(page, echo_server)
    with no_reload(page):
        page.get_by_label("Message").fill("hello, echo")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(["hello, echo"])
    expect(page.get_by_label("Message")).to_have_value("")


@pytest.mark.e2e
def test_twenty_quick_messages_come_back_in_order(page, echo_server):
    open_echo_page(page, echo_server)
    messages = [f"message {n}" for n in range(20)]
    for message in messages:
        page.get_by_label("Message").fill(message)
        page.get_by_label("Message").press("Enter")
    expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(messages)


@pytest.mark.e2e
def test_empty_or_blank_message_is_not_sent(page, echo_server):
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    open_echo_page(page, echo_server)
    for blank in ["", "   "]:
        page.get_by_label("Message").fill(blank)
        page.get_by_role("button", name="Send").click()
    page.get_by_label("Message").fill("not blank")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(["not blank"])
    assert sent == ["not blank"]


@pytest.mark.e2e
def test_page_reconnects_by_itself_after_a_server_restart(page, serve):
    server = serve("01_echo")
    open_echo_page(page, server)
    with no_reload(page):
        server.restart()
        expect(page.locator("#status")).to_have_text("closed")
        expect(page.locator("#status")).to_have_text("open", timeout=10_000)
        page.get_by_label("Message").fill("after the restart")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("log").get_by_role("listitem")).to_have_text(["after the restart"])


# --- fast tier: a Python WebSocket client against the same server ---


@pytest.mark.parametrize("text", ["hello", "grüße, 世界 👋", "<b>not html</b>", "x" * 60_000])
def test_socket_echoes_exactly_what_it_receives(echo_server, text):
    with connect(f"{echo_server.ws_url}/echo") as ws:
        ws.send(text)
        assert ws.recv(timeout=5) == text


def test_oversized_frame_closes_only_that_connection_with_1009(echo_server):
    with connect(f"{echo_server.ws_url}/echo") as bystander:
        # simple-websocket's client drops the TCP connection as soon as the close frame arrives
        # (websockets would wait for the server to drop it first, which Werkzeug does late).
        ws = Client.connect(f"{echo_server.ws_url}/echo")
        ws.send("x" * MAX_MESSAGE_BYTES)  # exactly the limit is fine
        assert len(ws.receive(timeout=5)) == MAX_MESSAGE_BYTES
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive(timeout=5)
        assert closed.value.reason == 1009
        bystander.send("still here")
        assert bystander.recv(timeout=5) == "still here"
