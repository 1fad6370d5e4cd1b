"""Step 10: `make step-10` starts every line of the Procfile (nginx, two web servers, two workers,
a private Redis), prints its https URL, runs a job, and Ctrl-C stops everything."""

import contextlib
import os
import re
import signal
import subprocess
from types import SimpleNamespace

import psutil
import pytest
import redis
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.launcher import ROOT, free_port, wait_until
from toolkit.pages import sign_up_in_browser
from toolkit.stack import TOOLS

need_tools(*TOOLS)  # CI installs them (.ci/run)


@pytest.mark.e2e
@pytest.mark.browser_context_args(ignore_https_errors=True)
def test_make_step_10_serves_two_web_servers_and_two_workers_and_ctrl_c_stops_everything(
    page, tmp_path
):
    https_port = free_port()
    run = subprocess.Popen(
        [
            "make",
            "-s",
            "step-10",
            f"HTTPS_PORT={https_port}",
            f"HTTP_PORT={free_port()}",
            f"REDIS_URL=redis://127.0.0.1:{free_port()}/0",  # none there: a private Redis
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=(tmp_path / "make.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        env={**os.environ, "JOB_STEPS": "3", "JOB_STEP_SECONDS": "0.1"},
    )
    output = lambda: (tmp_path / "make.log").read_text(errors="replace")  # noqa: E731
    children = []
    try:
        wait_until(lambda: output().count("Booting worker") == 2, "two web servers start", 90)
        wait_until(lambda: len(re.findall(r"worker[12]@\S+ ready\.", output())) == 2, "workers", 90)
        assert f"open https://localhost:{https_port}/" in output()
        redis_port = re.search(r"starting a private one on port (\d+)", output()).group(1)
        children = psutil.Process(run.pid).children(recursive=True)
        assert {"redis-server", "gunicorn", "nginx"} <= {child.name() for child in children}
        commands = [child.cmdline() for child in children]
        workers = {c[c.index("--hostname") + 1] for c in commands if "--hostname" in c}
        assert workers == {"worker1@%h", "worker2@%h"}  # each a main process and its pool
        sign_up_in_browser(page, SimpleNamespace(url=f"https://localhost:{https_port}"))
        page.get_by_role("link", name="Jobs").click()
        page.get_by_role("button", name="Start a job").click()
        status = page.locator("article.job").get_by_role("status")
        expect(status).to_have_text("Done", timeout=20_000)  # the workers' first job
        # The page says Done when the last step is in the stream; the worker acknowledges the
        # message just after. Ctrl-C in between stops Redis before the worker can hand the message
        # back (it stays unacknowledged, and the next start restores it), and Celery logs that.
        password = (ROOT / "steps/10_workers/instance/redis_password").read_text().strip()
        broker = redis.Redis(port=redis_port, password=password)
        wait_until(lambda: broker.hlen("unacked") == 0, "the worker acknowledges the job")
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert run.wait(timeout=30) in (0, -signal.SIGINT)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        assert "Traceback" not in output()
    finally:
        for process in [run, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
