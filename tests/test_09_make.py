"""Step 09 as a learner starts it: `make step-09` says what to install when nginx is missing, and
serves HTTPS with HTTP/2 until Ctrl-C stops every process.
"""

import contextlib
import os
import shutil
import signal
import subprocess

import psutil
import pytest
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.launcher import ROOT, free_port, path_with_only, wait_until
from toolkit.stack import TOOLS

need_tools(*TOOLS)  # CI installs them (.ci/run)
pytestmark = pytest.mark.browser_context_args(ignore_https_errors=True)


def test_make_step_09_without_nginx_says_what_to_install_and_installs_nothing(tmp_path):
    # A PATH with what make itself needs, and none of nginx, openssl, redis-server.
    tools = path_with_only(tmp_path / "bin", "sh", "install", "mkdir", "touch", "env")
    done = subprocess.run(
        [shutil.which("make"), "-s", "step-09", f"REDIS_URL=redis://127.0.0.1:{free_port()}/0"],
        cwd=ROOT,
        env={**os.environ, "PATH": tools},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "this machine lacks: nginx openssl redis-server" in done.stderr
    assert "sudo apt-get install nginx openssl redis-server" in done.stderr
    assert "brew install nginx openssl redis" in done.stderr


@pytest.mark.e2e
def test_make_step_09_serves_https_with_http_2_and_ctrl_c_stops_everything(page, tmp_path):
    https_port = free_port()
    run = subprocess.Popen(
        [
            "make",
            "-s",
            "step-09",
            f"HTTPS_PORT={https_port}",
            f"HTTP_PORT={free_port()}",
            f"REDIS_URL=redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=(tmp_path / "make.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    output = lambda: (tmp_path / "make.log").read_text(errors="replace")  # noqa: E731
    children = []
    try:
        wait_until(lambda: output().count("Booting worker") == 2, "two app servers start", 60)
        assert f"open https://localhost:{https_port}/" in output()
        assert "starting a private one" in output()
        children = psutil.Process(run.pid).children(recursive=True)
        assert {"redis-server", "gunicorn", "nginx"} <= {child.name() for child in children}
        page.goto(f"https://localhost:{https_port}/")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert run.wait(timeout=30) in (0, -signal.SIGINT)  # as in step 05's test
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        assert "Traceback" not in output()
    finally:
        for process in [run, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
