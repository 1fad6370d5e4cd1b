"""Steps 07 and 08 on the wire: what only a real server shows. The Origin of a handshake, the size
of a packet, another library's client, and a flood from two tabs while others chat, each against
`python app.py`. Every test runs on both steps. (The factories, too: importing a step's modules
does nothing, and `create_app` takes a config, in steps 07 to 09.)
"""

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import socketio
from websockets.exceptions import InvalidStatus

from toolkit.clients import SocketIOByHand
from toolkit.launcher import chat_server, step_folder, wait_until
from toolkit.people import OK, messages_until, send_to, sign_up

STEPS = ["07_rooms_and_logins", "08_under_attack"]


@pytest.fixture(scope="module", params=STEPS)
def server(request, tmp_path_factory):
    """`python app.py` of the step with a rate limit: 10 messages at once, then 1 a second (per
    user: each test signs up people of its own)."""
    folder = tmp_path_factory.mktemp("server")
    with chat_server(request.param, folder, SEND_BURST=10, SEND_RATE=1) as running:
        yield running


def test_a_python_socketio_client_speaks_the_same_contract(server):
    alice, bob = sign_up(server), sign_up(server)
    clients = [socketio.SimpleClient(), socketio.SimpleClient()]
    try:
        for client, person in zip(clients, (alice, bob), strict=True):
            client.connect(server.url, headers={"Cookie": person.cookie}, auth={"last_id": 10**9})
            assert client.call("join", {"room": "random"}, timeout=5) == OK
        answer = clients[0].call("send message", {"room": "random", "text": "hi"}, timeout=5)
        assert answer == OK
        while (event := clients[1].receive(timeout=5))[0] != "new message":
            pass
        assert event[1]["name"] == alice.name
        assert event[1]["text"] == "hi"
    finally:
        # disconnect() says goodbye at once, then waits 3 s for a close frame that
        # python-engineio's own reader thread has already taken: let it wait elsewhere.
        for client in clients:
            threading.Thread(target=client.disconnect, daemon=True).start()


def test_socket_from_a_foreign_origin_is_refused_even_with_the_cookie(server):
    cookie = sign_up(server).cookie
    with pytest.raises(InvalidStatus) as refused:
        SocketIOByHand(server, cookie, origin="http://evil.example")
    assert refused.value.response.status_code == 400
    request = urllib.request.Request(
        f"{server.url}/socket.io/?EIO=4&transport=polling",
        headers={"Origin": "http://evil.example", "Cookie": cookie},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    assert SocketIOByHand(server, cookie, origin=server.url).answer.startswith('40{"sid"')


def test_packet_over_64_kib_closes_only_that_connection(server, connect):
    alice_socket = connect(server, sign_up(server), rooms=["general"])
    mallory_socket = connect(server, sign_up(server))
    mallory_socket.emit("send message", {"room": "general", "text": "x" * 70_000})
    wait_until(lambda: mallory_socket.closed_by_server, "Mallory's socket is closed")
    assert send_to(alice_socket, "general", "still here") == OK


def test_a_user_who_floods_gets_errors_and_no_one_else_is_delayed(server, connect):
    alice, bob, carol = sign_up(server), sign_up(server), sign_up(server)
    tabs = [connect(server, alice) for _ in range(2)]  # two tabs, one user
    bob_socket = connect(server, bob, rooms=["general"])
    carol_socket = connect(server, carol, rooms=["general"])
    started = time.monotonic()
    for n in range(100):
        for tab in tabs:
            tab.emit("send message", {"room": "general", "text": f"flood {n}"}, ack=True)
    sent = time.monotonic()
    assert send_to(bob_socket, "general", "bob is not delayed") == OK
    messages_until(carol_socket, "bob is not delayed")
    bob_latency = time.monotonic() - sent
    answers = [answer for tab in tabs for answer in tab.answers(100).values()]
    elapsed = time.monotonic() - started
    accepted = answers.count(OK)
    # One bucket for both tabs: 10 at once, then 1 a second. One per tab would let 20 through.
    assert 10 <= accepted <= 10 + elapsed + 1
    too_fast = {"error": "You are sending too fast: wait a moment, then send again."}
    assert answers.count(too_fast) == 200 - accepted
    assert bob_latency < 1
    # No one was disconnected, the flooder included, who may send again a moment later.
    assert send_to(carol_socket, "general", "carol too") == OK
    wait_until(lambda: send_to(tabs[0], "general", "calm again") == OK, "Alice may send again")


# --- the factories ---

# Run in the step's folder: import every module of the app, check that nothing happened, then
# make an app with a config of its own. Step 09 is patched for gevent first, as gunicorn's worker
# does before it loads the app (Redis' client needs it).
IMPORT_THEN_CREATE = """
import os, sys, threading
if sys.argv[1] == "09_production":
    from gevent import monkey
    monkey.patch_all()
umask, threads = os.umask(0o022), threading.active_count()
os.umask(umask)
for name in sys.argv[3:]:
    __import__(name)
assert os.umask(umask) == umask, "importing changed the umask"
assert not os.path.exists("instance"), "importing made the instance folder"
assert threading.active_count() == threads, "importing started a thread"
import app
config = {"INSTANCE_PATH": sys.argv[2], "SECRET_KEY": "x", "SEND_BURST": 3}
made = app.create_app({**config, "REDIS_URL": "redis://127.0.0.1:1/0"})  # no Redis: not needed
settings = made.secret_key, made.config["SEND_BURST"], made.config["SEND_RATE"]
assert settings == ("x", 3, 42), settings  # the config's, over the environment's
assert os.listdir(sys.argv[2]) == ["chat.sqlite"], os.listdir(sys.argv[2])
assert made.test_client().get("/login").status_code == 200
"""


@pytest.mark.parametrize("step", [*STEPS, "09_production"])
def test_importing_the_app_does_nothing_and_create_app_takes_a_config(tmp_path, step):
    # A copy, without the instance folder a run may have left. gunicorn.conf.py and nginx_conf.py
    # are the servers' scripts, not modules of the app.
    folder = shutil.copytree(
        step_folder(step), tmp_path / step, ignore=shutil.ignore_patterns("instance", "__pycache__")
    )
    scripts = {"gunicorn.conf", "nginx_conf"}
    modules = sorted(path.stem for path in folder.glob("*.py") if path.stem not in scripts)
    env = {**os.environ, "SEND_RATE": "42", "SEND_BURST": "7"}
    instance = tmp_path / "instance"
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_THEN_CREATE, step, str(instance), *modules],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
