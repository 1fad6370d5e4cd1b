"""Exercise 01-01: /shout answers in upper case, after the time it received the message; /echo is
unchanged (the step's own tests check that)."""

import re
from datetime import datetime, timedelta

from websockets.sync.client import connect

SHOUTED = re.compile(r"(\d\d:\d\d:\d\d) (.*)", re.DOTALL)


def test_shout_answers_in_upper_case_after_the_time_it_received_the_message(serve):
    server = serve("01_echo")
    with connect(f"{server.ws_url}/shout") as ws:
        before = datetime.now().replace(microsecond=0)
        ws.send("hello, grüße")
        answer = SHOUTED.fullmatch(ws.recv(timeout=5))
        after = datetime.now()
    assert answer, "the answer is not HH:MM:SS then the message"
    received, text = answer.groups()
    assert text == "HELLO, GRÜSSE"
    received = datetime.combine(before.date(), datetime.strptime(received, "%H:%M:%S").time())
    assert before - timedelta(seconds=1) <= received <= after
