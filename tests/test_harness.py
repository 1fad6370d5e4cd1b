"""The toolkit can fail: its guards catch a reload and a request to another origin; and the
commands around the tests (make step-NN, make help, find-browser.sh) do what they say."""

import contextlib
import os
import re
import signal
import subprocess
from urllib.request import urlopen

import pytest

from toolkit.launcher import ROOT, free_port, wait_until
from toolkit.pages import OriginGuard, no_reload


@pytest.mark.e2e
def test_no_reload_fails_when_the_page_reloads(page, serve):
    server = serve("01_echo")
    page.goto(server.url)
    with pytest.raises(AssertionError, match="reloaded"), no_reload(page):
        page.reload()


@pytest.mark.e2e
def test_origin_guard_records_a_request_to_another_origin(new_context, serve):
    server = serve("01_echo")
    context = new_context()
    guard = OriginGuard(context)
    page = context.new_page()
    page.goto(server.url)
    with page.expect_event("requestfailed"):
        page.evaluate("fetch('http://127.0.0.2:9/elsewhere.js').catch(() => {})")
    assert guard.foreign == [f"{server.url}/ fetched http://127.0.0.2:9/elsewhere.js"]


def test_make_step_serves_the_page_and_ctrl_c_stops_it(tmp_path):
    port = free_port()
    log = tmp_path / "make.log"
    # A script that runs the suite in the background (`make test &`) starts it ignoring Ctrl-C,
    # and a program inherits that: make and the server would never hear it. A handler of our own
    # is not inherited; a program started meanwhile gets the default, as from a terminal.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "step-01", f"PORT={port}"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )
    finally:
        signal.signal(signal.SIGINT, ignored)
    try:
        wait_until(lambda: "Running on" in log.read_text(), "the step runs", timeout=30)
        page_html = urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C does
        make.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test that failed leaves nothing behind
            os.killpg(make.pid, signal.SIGKILL)
    assert "<h1>WebSocket echo</h1>" in page_html
    assert "Traceback" not in log.read_text()


def test_make_help_lists_every_target_of_the_makefile():
    listing = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    # Every rule whose target is a name (not a file such as .venv/.test), "%" shown as NN.
    makefile = (ROOT / "Makefile").read_text()
    targets = [t.replace("%", "NN") for t in re.findall(r"^([a-z0-9%-]+):", makefile, re.M)]
    assert {"step-NN", "step-05", "test", "lint", "diff", "diff-all", "clean"} <= set(targets)
    missing = [target for target in targets if f"\n  {target} " not in listing]
    assert missing == [], f"make help does not list {missing}"


def find_browser(**env):
    return subprocess.run(
        ["bash", "tests/find-browser.sh"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def test_find_browser_prefers_chromium_path():
    found = find_browser(CHROMIUM_PATH="/bin/sh")  # any executable will do here
    assert (found.returncode, found.stdout) == (0, "/bin/sh\n")


def test_find_browser_refuses_a_chromium_path_that_is_not_a_program():
    found = find_browser(CHROMIUM_PATH=str(ROOT / "README.md"))
    assert found.returncode == 1
    assert "not an executable" in found.stderr


def test_a_test_that_can_launch_a_browser_must_be_marked_e2e(pytester):
    """The course's fixtures refuse to collect a test that uses Playwright's fixtures without the
    mark: `make test-fast` leaves out e2e tests, and runs where no browser is found."""
    pytester.makeconftest('pytest_plugins = ["toolkit.fixtures"]')
    pytester.makeini("[pytest]\nmarkers =\n    e2e: drives a real browser\n")
    pytester.makepyfile(
        test_tiers="""
        import pytest

        @pytest.mark.e2e
        def test_marked(page):
            pass

        def test_unmarked(browser_type):
            pass

        def test_without_a_browser():
            pass
        """
    )
    refused = pytester.runpytest_subprocess("--collect-only")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(
        ["*not marked @pytest.mark.e2e:", "  test_tiers.py::test_unmarked*"]
    )
    assert "test_marked" not in refused.stderr.str()
