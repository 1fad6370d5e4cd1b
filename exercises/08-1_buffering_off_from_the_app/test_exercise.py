"""Exercise 08-1: nginx passes a job's events on one by one because the app asks it to, with
`X-Accel-Buffering: no`, not because nginx.conf says `proxy_buffering off`."""

import re

import pytest
import test_08_production as step_tests
from harness import step_folder
from stack_08 import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The step's shared stack, with the step's settings."""
    with Stack(tmp_path_factory.mktemp("stack"), **step_tests.SHARED) as shared:
        yield shared


def test_nginx_conf_no_longer_turns_buffering_off():
    nginx_conf = (step_folder("08_production") / "nginx.conf").read_text()
    assert not re.search(r"^\s*proxy_buffering\s", nginx_conf, re.MULTILINE)


def test_a_jobs_events_still_come_through_nginx_one_by_one(stack):
    # The step's own test, on this copy of the step.
    step_tests.test_a_jobs_events_come_through_nginx_one_by_one_within_200_ms_of_being_produced(
        stack
    )
