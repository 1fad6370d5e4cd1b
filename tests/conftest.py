"""Fixtures for every test: step servers, browsers for one or two users, and the e2e marker."""

import os

import pytest
from harness import OriginGuard, StepServer


def pytest_collection_modifyitems(items):
    """Mark every test that drives a browser, so `make test-fast` can leave them out."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


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
