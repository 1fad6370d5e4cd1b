"""The course's pytest fixtures, a plugin that tests/ and exercises/ both load
(`pytest_plugins = ["toolkit.fixtures"]` in their conftest.py): step servers, steps 07 and 08
made in the test's process (`in_process`), step 09's stack shared by a process's tests
(`shared_stack`), browsers for one or two users, Socket.IO connections to steps 07 to 09. Also one
check: a test that can launch a browser must be marked e2e, so that `make test-fast` can leave it
out."""

import os
import shutil

import pytest

from toolkit.clients import socketio_by_hand
from toolkit.inprocess import InProcess
from toolkit.launcher import RedisServer, StepServer
from toolkit.pages import OriginGuard
from toolkit.people import OK, rows
from toolkit.stack import SHARED_SETTINGS, TOOLS, Stack

# Steps 07 to 09 hash passwords with scrypt at 170 ms of CPU a hash, Werkzeug's default; the
# servers the tests start inherit this cheaper one (4 ms), which halves step 08's tests. The
# test that times a refused sign-in sets the real one.
os.environ.setdefault("PASSWORD_HASH", "scrypt:1024:8:1")


def pytest_collection_modifyitems(config, items):
    """`make test-fast` runs `-m "not e2e"` on machines without a browser: a test that can launch
    one (it uses Playwright's fixtures, which all start from `playwright`) must say so."""
    unmarked = [
        item.nodeid
        for item in items
        if "playwright" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("e2e") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "These tests can launch a browser and are not marked @pytest.mark.e2e:\n  "
            + "\n  ".join(unmarked)
        )


def need_tools(*tools: str) -> None:
    """Skip the tests of a module (or a fixture's) when these programs are not installed, and say
    which to install; in CI (.ci/run installs them) fail instead: a test must never pass there by
    skipping."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = f"these tests need {', '.join(missing)} (apt-get install {' '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Drive the Chromium that make found (tests/find-browser.sh), if it found one."""
    path = os.environ.get("CHROMIUM_PATH")
    return {**browser_type_launch_args, **({"executable_path": path} if path else {})}


@pytest.fixture
def serve(tmp_path):
    """Start steps as subprocesses: `server = serve("01_echo", SOME_SETTING=1)`."""
    servers = []

    def start(step, **env):
        server = StepServer(step, tmp_path, **env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server for one test."""
    need_tools("redis-server")
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory):
    """Step 09's whole stack (toolkit.stack.Stack) with SHARED_SETTINGS, started once in each
    pytest process and shared by every test that stops nothing of it."""
    need_tools(*TOOLS)
    with Stack("09_production", tmp_path_factory.mktemp("stack"), **SHARED_SETTINGS) as stack:
        yield stack


@pytest.fixture
def new_user(new_context):
    """Open a page for a new user (own browser context, own cookies).

    The test fails if any of these pages fetches anything from outside its own origin.
    """
    guards = []

    def open_page():
        context = new_context()
        guards.append(OriginGuard(context))
        return context.new_page()

    yield open_page
    foreign = [line for guard in guards for line in guard.foreign]
    assert not foreign, "pages fetched from other origins:\n" + "\n".join(foreign)


@pytest.fixture
def page(new_user):
    return new_user()


@pytest.fixture
def two_users(new_user):
    """Alice's and Bob's pages, in two separate browser contexts."""
    return new_user(), new_user()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """Make a step's app in this process (toolkit.inprocess.InProcess), where a handler's logic
    is the point and not the transport: `chat = in_process("07_rooms_and_logins", SEND_RATE=0)`
    has a database of its own and stands where a server would, for people.py's helpers and for
    `connect`. Module scope, so that a module's fixtures may share one app."""

    def make(step, **config):
        return InProcess(step, tmp_path_factory.mktemp(step), **config)

    return make


@pytest.fixture
def connect():
    """Open Socket.IO connections to steps 07 to 09 (clients.SocketIOByHand), as a signed-in
    page does: `alice_socket = connect(server, alice, rooms=["general"])`."""
    sockets = []

    def open_socket(server, person, rooms=(), last_id=None, **options):
        """last_id: by default the newest id so far, as for a page that has shown everything.
        `options` go to SocketIOByHand."""
        if last_id is None:
            last_id = rows(server, "SELECT coalesce(max(id), 0) FROM messages")[0][0]
        socket = socketio_by_hand(server, person.cookie, {"last_id": last_id}, **options)
        sockets.append(socket)
        assert socket.answer.startswith('40{"sid"'), socket.answer
        for room in rooms:
            assert socket.call("join", {"room": room}) == OK
        return socket

    yield open_socket
    for socket in sockets:
        socket.close()
