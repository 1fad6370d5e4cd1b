"""Exercise 09-01: nginx passes a job's events on one by one because the app asks it to, with
`X-Accel-Buffering: no`, not because nginx.conf says `proxy_buffering off`."""

import re

import pytest

from toolkit.jobs import delays_through_nginx
from toolkit.launcher import step_folder
from toolkit.stack import SHARED_SETTINGS, Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The step's shared stack, with the step's settings."""
    with Stack("09_production", tmp_path_factory.mktemp("stack"), **SHARED_SETTINGS) as shared:
        yield shared


def test_nginx_conf_no_longer_turns_buffering_off():
    nginx_conf = (step_folder("09_production") / "nginx.conf").read_text()
    assert not re.search(r"^\s*proxy_buffering\s", nginx_conf, re.MULTILINE)


def test_a_jobs_events_still_come_through_nginx_one_by_one(stack):
    # As the step's own test measures it, on this copy of the step.
    delays = delays_through_nginx(stack, events=8)
    assert len(delays) >= 6, "fewer than 6 events were produced after the stream opened"
    assert max(delays.values()) < 0.2, delays
