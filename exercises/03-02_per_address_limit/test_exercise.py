"""Exercise 03-02: the rate limit counts every connection from one address together."""

from websockets.sync.client import connect

from toolkit.clients import ALERT, chat_frame, messages_in, next_messages


def next_message_or_alert(ws, sender):
    """The text of the next alert, or of the next message from `sender`, the connection gets."""
    while True:
        frame = ws.recv(timeout=5)
        if alert := ALERT.search(frame):
            return alert[1]
        for name, text in messages_in(frame):
            if name == sender:
                return text


def test_two_connections_from_one_address_share_one_bucket(serve):
    # Four in a row, then one every 100 s: the test never waits long enough for a new token.
    server = serve("03_chat", HISTORY=0, SEND_BURST=4, SEND_RATE=0.01)
    url = f"{server.ws_url}/chatroom"
    with connect(url) as alice, connect(url) as bob:
        for text in ["one from Alice", "two from Alice"]:
            alice.send(chat_frame(text, "Alice"))
            assert next_messages(alice) == [("Alice", text)]
        for text in ["one from Bob", "two from Bob"]:
            bob.send(chat_frame(text, "Bob"))
            assert next_message_or_alert(bob, "Bob") == text
        bob.send(chat_frame("three from Bob", "Bob"))
        answer = next_message_or_alert(bob, "Bob")
    assert answer.startswith("Slow down"), f"the fifth message from 127.0.0.1 went out: {answer}"
