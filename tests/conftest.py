"""Fixtures for every test: step servers, Socket.IO connections to steps 07 and 08, and
browsers for one or two users. Also the two checks
on the suite itself: a test that can launch a browser must be marked e2e, and how the tests are
shared out among pytest-xdist's processes."""

import os

import pytest
from accounts import OK, rows
from chat_clients import SocketIOByHand
from harness import OriginGuard, StepServer

pytest_plugins = ["pytester"]  # tests/test_harness.py runs pytest on a file of its own

# Steps 07 and 08 hash passwords with scrypt at 170 ms of CPU a hash, Werkzeug's default; the
# servers the tests start inherit this cheaper one (4 ms), which halves step 07's tests. The
# test that times a refused sign-in sets the real one.
os.environ.setdefault("PASSWORD_HASH", "scrypt:1024:8:1")


def pytest_collection_modifyitems(config, items):
    refuse_unmarked_browser_tests(items)
    if hasattr(config, "workerinput"):  # a pytest-xdist process
        longest_groups_first(items)


def refuse_unmarked_browser_tests(items):
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


def group_of(nodeid):
    """The group a test runs in under `make test`: its file and tier (browser tests, the rest),
    its notebook, or in test_pages its step (a server per class). A group runs in one process, so
    a shared server starts at most twice. (Browser tests carry Playwright's [chromium] in their
    id.)"""
    path, *rest = nodeid.split("::")
    if path.endswith("test_notebooks.py"):
        return nodeid
    if path.endswith("test_pages.py"):
        return f"{path}::{rest[0]}"
    return f"{path} e2e" if "[chromium" in nodeid else path


def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadscope`, pytest-xdist hands out whole scopes: let the groups be the scopes.
    (Its own `--dist loadgroup` renames tests, which pytest 9 no longer lets a plugin do.)"""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LoadGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid)

    return LoadGroupScheduling(config, log)


def longest_groups_first(items):
    """Order the tests so that the groups that take longest are handed out first, and no process
    is left with a long one at the end: a notebook, a browser test or a slow one takes seconds,
    most other tests a fraction of one. (`--no-loadscope-reorder` keeps this order.)"""
    cost = {}
    for item in items:
        seconds = 20 if "test_notebooks.py" in item.nodeid else 0.5
        if item.get_closest_marker("e2e") or item.get_closest_marker("slow"):
            seconds = max(seconds, 5)
        group = group_of(item.nodeid)
        cost[group] = cost.get(group, 0) + seconds
    items.sort(key=lambda item: -cost[group_of(item.nodeid)])  # stable: a file keeps its order


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Drive the Chromium that `make test` found (tests/find-browser.sh), if it found one."""
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


@pytest.fixture
def connect():
    """Open Socket.IO connections to step 07 or 08 (chat_clients.SocketIOByHand), as a signed-in
    page does: `alice_socket = connect(server, alice, rooms=["general"])`."""
    sockets = []

    def open_socket(server, person, rooms=(), last_id=None, **options):
        """last_id: by default the newest id so far, as for a page that has shown everything.
        `options` go to SocketIOByHand."""
        if last_id is None:
            last_id = rows(server, "SELECT coalesce(max(id), 0) FROM messages")[0][0]
        socket = SocketIOByHand(server, person.cookie, {"last_id": last_id}, **options)
        sockets.append(socket)
        assert socket.answer.startswith('40{"sid"'), socket.answer
        for room in rooms:
            assert socket.call("join", {"room": room}) == OK
        return socket

    yield open_socket
    for socket in sockets:
        socket.close()
