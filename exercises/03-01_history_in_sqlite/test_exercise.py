"""Exercise 03-01: the history survives a restart, kept in SQLite."""

from websockets.sync.client import connect

from toolkit.clients import chat_frame, next_messages, texts


def test_a_newcomer_after_a_restart_receives_the_messages_sent_before_it(serve, tmp_path):
    server = serve("03_chat", HISTORY=5, HISTORY_DB=tmp_path / "history.sqlite3")
    url = f"{server.ws_url}/chatroom"
    with connect(url) as alice:
        for n in range(7):
            alice.send(chat_frame(f"before the restart {n}", "Alice"))
            next_messages(alice)
    server.restart()
    with connect(url) as bob:
        expected = [f"before the restart {n}" for n in range(2, 7)]
        assert texts(next_messages(bob)) == expected, "the history did not survive"
        bob.send(chat_frame("after the restart", "Bob"))
        assert texts(next_messages(bob)) == ["after the restart"]
