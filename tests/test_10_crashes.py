"""Step 10: nothing lost and nothing twice when a process dies mid-job, with real processes.

A page follows a job through nginx while the tests kill what runs it: the pool process running
the job (SIGKILL), a whole worker (its main process and pool), each web server in turn; and
restart Redis with jobs in its queue. Each time the job ends, and ids prove that no step was lost
or shown twice: the job's stream in Redis holds events 1, 2, 3 ... without a gap, each step once,
and the page's log lists each step once, in order. (toolkit.workers.WorkerStack starts the
Procfile's processes and kills them by PID.) Each test prints how long the job took to recover.
"""

import re
import time

import pytest
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.launcher import wait_until
from toolkit.pages import RECONNECT_TIMEOUT, no_reload, sign_up_in_browser
from toolkit.people import sign_up
from toolkit.stack import TOOLS
from toolkit.workers import (
    PICKED_UP,
    WorkerStack,
    expect_done,
    lines_of,
    start_job_with,
    steps_on,
)

need_tools(*TOOLS)  # CI installs them (.ci/run)

pytestmark = pytest.mark.slow  # each test starts a whole stack of its own, or kills one


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "ignore_https_errors": True}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A stack for the tests that kill a pool process: its worker starts another in its place, so
    the stack stays whole. Jobs of 12 steps of 0.2 s."""
    with WorkerStack(tmp_path_factory.mktemp("crashes"), JOB_STEPS=12) as shared:
        yield shared


def expect_ids_without_gap_and_each_step_once(stack, job, steps):
    """The ids: the job's stream holds events 1..n, each step's event once, in order."""
    ids = stack.event_ids(job)
    assert ids == list(range(1, len(ids) + 1)), ids
    assert stack.steps_recorded(job) == list(range(1, steps + 1))


@pytest.mark.e2e
def test_a_pool_process_killed_mid_job_is_replaced_and_the_page_shows_every_step_once(page, stack):
    sign_up_in_browser(page, stack)
    job = start_job_in(page)
    card = page.locator("article.job")
    with no_reload(page):
        worker, pid = stack.running_in(job, after_step=3)
        killed = time.monotonic()
        stack.kill_pool_process(pid)  # SIGKILL: no goodbye, its message is not acknowledged
        wait_until(lambda: stack.job(job)["pid"] != str(pid), "another process runs the job")
        recovered = time.monotonic() - killed
        expect_done(card, 12)
    picked_up = [line for line in lines_of(card) if PICKED_UP.match(line)]
    assert len(picked_up) == 1, lines_of(card)
    assert PICKED_UP.match(picked_up[0])[2] in ("3", "4")  # it carried on after the last step
    expect_ids_without_gap_and_each_step_once(stack, job, 12)
    print(f"{worker}'s pool process killed; the job went on {recovered:.2f} s later")


def start_job_in(page) -> str:
    """Start a job from the jobs page; its id."""
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("button", name="Start a job").click()
    link = page.get_by_role("link", name="Follow this job in another tab")
    return link.get_attribute("href").rsplit("/", 1)[1]


@pytest.mark.e2e
def test_a_job_cancelled_while_its_process_is_killed_stays_cancelled(page, stack):
    sign_up_in_browser(page, stack)
    job = start_job_in(page)
    card = page.locator("article.job")
    _, pid = stack.running_in(job, after_step=2)
    # Cancel, and kill the process in the middle of the step it is doing: it never sees the
    # request. The job is picked up again, and the new process must not carry on.
    with page.expect_response(re.compile(r"/cancel$")) as answer:
        card.get_by_role("button", name="Cancel").click()
    assert answer.value.status == 202
    stack.kill_pool_process(pid)
    cancelled = re.compile(r"^Cancelled after step \d+ of 12$")
    expect(card.get_by_role("status")).to_have_text(cancelled, timeout=RECONNECT_TIMEOUT)
    stopped_at = int(card.get_by_role("status").text_content().split()[3])
    assert steps_on(card) == list(range(1, stopped_at + 1))
    assert stopped_at < 12
    assert stack.steps_recorded(job) == list(range(1, stopped_at + 1))
    assert stack.job(job)["state"] == "done"


@pytest.mark.e2e
def test_a_whole_worker_killed_mid_job_hands_it_to_the_other_after_the_visibility_timeout(
    page, tmp_path
):
    # A visibility timeout of 4 s, and jobs shorter than that once picked up (8 steps of 0.2 s):
    # a job still running when the timeout passes would be handed out a second time.
    with WorkerStack(tmp_path, JOB_STEPS=8, VISIBILITY_TIMEOUT=4) as stack:
        sign_up_in_browser(page, stack)
        job = start_job_in(page)
        card = page.locator("article.job")
        with no_reload(page):
            worker, _ = stack.running_in(job, after_step=2)
            killed = stack.kill_worker(worker)  # its main process and its pool: SIGKILL, all
            other = "worker2" if worker == "worker1" else "worker1"
            wait_until(lambda: stack.job(job)["worker"] == other, f"{other} runs the job", 30)
            recovered = time.monotonic() - killed
            expect_done(card, 8)
        (picked_up,) = [PICKED_UP.match(line) for line in lines_of(card) if PICKED_UP.match(line)]
        assert picked_up[1] == other
        expect_ids_without_gap_and_each_step_once(stack, job, 8)
        # Not before the visibility timeout (4 s after the worker took the job), give or take one
        # look for such messages (every second here).
        assert recovered < 4 + 1 + 5, recovered
        print(f"{worker} killed whole; {other} took the job {recovered:.1f} s later")


@pytest.mark.e2e
def test_both_web_servers_restarted_one_after_the_other_mid_job_the_page_resumes_and_ends(
    page, tmp_path
):
    # 15 s of work: longer than both restarts on a busy machine (each about 3 s to stop, as much
    # to start).
    with WorkerStack(tmp_path, JOB_STEPS=300, JOB_STEP_SECONDS=0.05) as stack:
        sign_up_in_browser(page, stack)
        job = start_job_in(page)
        card = page.locator("article.job")
        with no_reload(page):
            for app in ("app1", "app2"):
                stopped = stack.stop(app)  # SIGTERM: gunicorn cuts its streams after 3 s
                stack.start(app)
                assert stack.job(job)["state"] == "running", "the job ended before the restart"
                print(f"{app} stopped in {stopped:.1f} s and started again")
            expect_done(card, 300, timeout=RECONNECT_TIMEOUT)
        expect_ids_without_gap_and_each_step_once(stack, job, 300)
        assert not [line for line in lines_of(card) if PICKED_UP.match(line)]


@pytest.mark.e2e
def test_jobs_queued_before_redis_restarts_still_run_and_a_full_queue_says_so(page, tmp_path):
    with WorkerStack(tmp_path, JOB_STEPS=3, MAX_QUEUED=3, JOBS_PER_USER=10) as stack:
        for worker in ("worker1", "worker2"):  # no one takes the jobs: they wait in the queue
            stack.stop(worker)
        sign_up_in_browser(page, stack)
        page.get_by_role("link", name="Jobs").click()
        start, cards = page.get_by_role("button", name="Start a job"), page.locator("article.job")
        for queued in (1, 2, 3):
            start.click()
            expect(cards).to_have_count(queued)
        start.click()  # a fourth: the queue is full
        expect(page.locator("#error")).to_have_text(
            "3 jobs are waiting for a worker, as many as the queue holds. Try again in a moment."
        )
        expect(cards).to_have_count(3)
        jobs = [card.get_attribute("id").removeprefix("job-") for card in cards.all()]
        with no_reload(page):
            restarted = time.monotonic()
            stack.restart_redis()  # SIGTERM: Redis writes its append-only file out, and exits
            assert stack.redis().llen("celery") == 3  # the queue came back from the file
            for worker in ("worker1", "worker2"):
                stack.start(worker)
            for card in cards.all():
                expect_done(card, 3, timeout=RECONNECT_TIMEOUT)
        for job in jobs:
            expect_ids_without_gap_and_each_step_once(stack, job, 3)
        print(f"3 queued jobs done {time.monotonic() - restarted:.1f} s after Redis restarted")


def test_a_worker_stopped_cleanly_gives_its_job_back_at_once_to_the_other(stack):
    job = start_job_with(sign_up(stack), stack)
    worker, _ = stack.running_in(job, after_step=2)
    stopped = stack.stop(worker)  # SIGTERM, as honcho or systemd stop it: the pool stops too
    try:
        other = "worker2" if worker == "worker1" else "worker1"
        wait_until(lambda: stack.job(job)["worker"] == other, f"{other} runs the job")
        wait_until(lambda: stack.job(job)["state"] == "done", "the job is done")
        expect_ids_without_gap_and_each_step_once(stack, job, 12)
        print(f"{worker} stopped in {stopped:.1f} s; {other} carried on with the job")
    finally:
        stack.start(worker)  # the module's stack whole again
