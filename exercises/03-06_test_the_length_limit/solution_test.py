"""One test that catches a missing length limit: a message over 500 characters reaches no one,
and its sender is told why."""

import json

from websockets.sync.client import connect

from toolkit.clients import chat_frame, next_alert, next_messages, texts


def test_a_message_of_501_characters_is_refused_and_no_one_receives_it(serve):
    server = serve("03_chat", HISTORY=0)
    with connect(f"{server.ws_url}/chatroom") as alice, connect(f"{server.ws_url}/chatroom") as bob:
        alice.send(json.dumps({"name": "Alice", "chat_message": "x" * 501}))
        assert "at most 500 characters" in next_alert(alice)
        # The first message Bob receives is the short one that follows.
        alice.send(chat_frame("short", name="Alice"))
        assert texts(next_messages(bob)) == ["short"]
