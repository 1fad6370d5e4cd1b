"""Exercise 06-01: a job can be cancelled; it stops after its current step and says so."""

import http.client
import re

import pytest
from playwright.sync_api import expect

from toolkit.jobs import EventStream, log_items, start_job, start_job_on_page

STEPS = 50  # 10 s of work: a cancelled job stops long before its end
CANCELLED = re.compile(rf"Cancelled after step (\d+) of {STEPS}")


@pytest.fixture
def long_jobs(serve):
    return serve("06_sse_progress", JOB_STEPS=STEPS, JOB_STEP_SECONDS=0.2)


def post(server, path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", path)
    status = connection.getresponse().status
    connection.close()
    return status


def test_a_cancelled_job_says_so_then_ends_its_stream_with_done(long_jobs):
    job_url = start_job(long_jobs)
    with EventStream(long_jobs, job_url) as stream:
        stream.events(2)
        assert post(long_jobs, f"{job_url}/cancel") == 202
        *rest, last = stream.events()  # the stream ends after `done`
    assert last["event"] == "done"
    stopped_at = CANCELLED.search(rest[-1]["data"])
    assert stopped_at, "the event before done does not say that the job was cancelled"
    assert 2 <= int(stopped_at[1]) < STEPS
    assert post(long_jobs, "/jobs/00000000/cancel") == 404


@pytest.mark.e2e
def test_the_cancel_button_stops_the_job_and_the_card_says_so(page, long_jobs):
    page.goto(long_jobs.url)
    card = start_job_on_page(page)
    expect(log_items(card)).not_to_have_count(0)
    card.get_by_role("button", name="Cancel").click(timeout=5000)
    expect(card.get_by_role("status")).to_have_text(CANCELLED)
    assert log_items(card).count() < STEPS
