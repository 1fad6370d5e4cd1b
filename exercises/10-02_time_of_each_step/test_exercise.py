"""Exercise 10-02: each step's line says how long the step took in the worker."""

import re

import pytest

from toolkit.launcher import wait_until
from toolkit.people import sign_up
from toolkit.workers import WorkerStack, start_job_with

TIMED = re.compile(r"^Step (\d) of 4 done by worker[12] in (\d+\.\d\d) s$")


@pytest.fixture
def stack(tmp_path):
    with WorkerStack(tmp_path, JOB_STEPS=4, JOB_STEP_SECONDS=0.2) as stack:
        yield stack


def test_each_step_line_says_how_long_the_step_took(stack):
    job = start_job_with(sign_up(stack), stack)
    wait_until(lambda: stack.job(job).get("state") == "done", "the job is done", 30)
    lines = [
        event.split("<li>")[1].split("</li>")[0]
        for _, fields in stack.redis().xrange(f"job:{job}:events")
        if "<li>" in (event := fields["event"])
    ]
    timed = [TIMED.match(line) for line in lines]
    assert all(timed), lines
    assert [int(match[1]) for match in timed] == [1, 2, 3, 4]
    assert all(float(match[2]) >= 0.2 for match in timed), lines
