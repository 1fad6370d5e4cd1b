"""Exercise 05-02: bot.py, a python-socketio client on server A, answers a page on server B."""

import os
import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from toolkit.clients import messages, online_count, open_chat, say
from toolkit.fixtures import need_tools
from toolkit.launcher import start_side_by_side, step_folder
from toolkit.pages import no_reload

STEP = "05_scale_out"
ANSWER = re.compile(r"^timebot \d\d:\d\d It is \d\d:\d\d:\d\d\.$")

need_tools("redis-server")


@pytest.fixture
def two_servers(redis_server, tmp_path):
    """Servers A and B of the step, sharing `redis_server`, as the step's own tests start them."""
    servers = start_side_by_side(
        STEP, 2, tmp_path, REDIS_URL=redis_server.url, PRESENCE_INTERVAL=0.2
    )
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def start_bot(tmp_path):
    """Start `python bot.py` against a server, as a learner would; stopped by its PID."""
    bots = []

    def start(server):
        log = tmp_path / f"bot-{len(bots)}.log"
        with log.open("wb") as output:
            bots.append(
                subprocess.Popen(
                    [sys.executable, str(step_folder(STEP) / "bot.py")],
                    env={**os.environ, "CHAT_URL": server.url},
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
        bots[-1].log = log
        return bots[-1]

    yield start
    for bot in bots:
        if bot.poll() is None:
            bot.kill()
            bot.wait(timeout=10)


@pytest.mark.e2e
def test_the_bot_on_server_a_answers_time_to_a_page_on_server_b_once(page, two_servers, start_bot):
    server_a, server_b = two_servers
    open_chat(page, server_b, "Alice")
    bot = start_bot(server_a)
    # The count is of both servers' clients (through Redis): 2 once the bot is in.
    try:
        expect(online_count(page)).to_have_text("2", timeout=15_000)
    except AssertionError:
        assert bot.poll() is None, f"bot.py exited:\n{bot.log.read_text()}"
        raise
    with no_reload(page):
        say(page, "hello, bot")  # not the command: no answer
        say(page, "/time")
        expect(messages(page)).to_have_text(
            [re.compile("hello, bot$"), re.compile("/time$"), ANSWER]
        )
        # Once more: an answer to anything else, or to itself, would have come by now.
        say(page, "/time")
        expect(messages(page)).to_have_text(
            [re.compile("hello, bot$"), re.compile("/time$"), ANSWER, re.compile("/time$"), ANSWER]
        )
