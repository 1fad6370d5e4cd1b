"""Exercise 10-01: a job longer than the visibility timeout is run by one process, once."""

import pytest

from toolkit.launcher import wait_until
from toolkit.people import sign_up
from toolkit.workers import PICKED_UP, STEP_LINE, WorkerStack, start_job_with


@pytest.fixture
def short_timeout(tmp_path):
    """Jobs of 20 steps of 0.2 s, and a visibility timeout of 2 s: half a job."""
    with WorkerStack(tmp_path, JOB_STEPS=20, JOB_STEP_SECONDS=0.2, VISIBILITY_TIMEOUT=2) as stack:
        yield stack


def test_a_job_longer_than_the_visibility_timeout_runs_once_in_one_process(short_timeout):
    stack = short_timeout
    job = start_job_with(sign_up(stack), stack)
    wait_until(lambda: stack.job(job).get("state") == "done", "the job is done", 30)
    lines = [
        event.split("<li>")[1].split("</li>")[0]
        for _, fields in stack.redis().xrange(f"job:{job}:events")
        if "<li>" in (event := fields["event"])
    ]
    assert not [line for line in lines if PICKED_UP.match(line)], lines
    steps = [STEP_LINE.match(line) for line in lines]
    assert all(steps), lines
    assert [int(step[1]) for step in steps] == list(range(1, 21))
    assert len({step[3] for step in steps}) == 1, "two workers ran the job"
