"""Exercise 06-02: jobs and their events are stored, so that a restart forgets none: a page that
was open through the restart shows how each of its jobs ended, each step once."""

import re

import pytest
from playwright.sync_api import expect

from toolkit.jobs import log_items, start_job_on_page
from toolkit.pages import RECONNECT_TIMEOUT, no_reload

STEPS = 15
INTERRUPTED = re.compile(rf"^Interrupted after step (\d+) of {STEPS}\b")


def job_id(card):
    return card.get_attribute("id").removeprefix("job-")


@pytest.mark.e2e
def test_after_a_restart_the_page_shows_one_job_done_and_the_other_interrupted(
    page, serve, tmp_path
):
    database = tmp_path / "jobs.sqlite"
    server = serve(
        "06_sse_progress", JOB_STEPS=STEPS, JOB_STEP_SECONDS=0.15, JOBS_DATABASE=database
    )
    page.goto(server.url)
    with no_reload(page):
        finished = start_job_on_page(page)
        expect(finished.get_by_role("status")).to_have_text("Done")
        running = start_job_on_page(page)
        expect(log_items(running).first).to_be_attached()
        server.restart()  # kills the server, its job's thread with it, and starts it again

        status = running.get_by_role("status")
        expect(status).to_have_text(INTERRUPTED, timeout=RECONNECT_TIMEOUT)
        # The stream resumed after the last step the page had: every step it shows, once, in
        # order, and as many as the status line says.
        done = int(INTERRUPTED.match(status.text_content())[1])
        expected = [f"Step {step} of {STEPS} done" for step in range(1, done + 1)]
        expect(log_items(running)).to_have_text(expected)
        expect(finished.get_by_role("status")).to_have_text("Done")
        expect(log_items(finished)).to_have_count(STEPS)

    # A page opened after the restart lists both jobs, and a job's own page still works.
    later = page.context.new_page()
    later.goto(server.url)
    kept = later.get_by_role("listitem")
    expect(kept.filter(has_text=job_id(finished))).to_contain_text("Done")
    expect(kept.filter(has_text=job_id(running))).to_contain_text("Interrupted after step")
    later.get_by_role("link", name=f"Job {job_id(finished)}").click()
    expect(later.get_by_role("status")).to_have_text("Done")
    expect(log_items(later)).to_have_count(STEPS)
