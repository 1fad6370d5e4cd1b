"""Exercise 06-03: a badge in every page's header, fed by Server-Sent Events, counts the jobs that
finished since this browser last opened the jobs page; opening it clears the badge in every tab."""

import pytest
from playwright.sync_api import expect

from toolkit.jobs import start_job_on_page
from toolkit.pages import no_reload


def badge(tab):
    return tab.get_by_role("banner").get_by_role("status")


def kinds_fetched(tab):
    """A list that fills with the Content-Type of each answer to the tab's own fetches."""
    kinds = []

    def record(response):
        if response.request.resource_type == "fetch":
            kinds.append(response.headers.get("content-type", ""))

    tab.on("response", record)
    return kinds


@pytest.mark.e2e
def test_a_finished_job_shows_on_another_tabs_badge_until_the_jobs_page_is_opened(page, serve):
    server = serve("06_sse_progress", JOB_STEPS=2, JOB_STEP_SECONDS=0.1, HEARTBEAT=0.5)
    page.goto(server.url)
    first = start_job_on_page(page)
    # A second tab of the same browser, on the job's own page: the badge is on every page.
    other = page.context.new_page()
    fetched = kinds_fetched(other)
    other.goto(f"{server.url}/jobs/{first.get_attribute('id').removeprefix('job-')}")
    with no_reload(other):
        expect(other.get_by_role("status").last).to_have_text("Done")
        expect(first.get_by_role("status")).to_have_text("Done")
        expect(badge(other)).to_have_text("1 finished job you have not seen")
        second = start_job_on_page(page)
        expect(second.get_by_role("status")).to_have_text("Done")
        expect(badge(other)).to_have_text("2 finished jobs you have not seen")
        expect(badge(page)).to_have_text("2 finished jobs you have not seen")

        # A third tab opens the jobs page: every tab's badge is cleared, none reloaded.
        third = page.context.new_page()
        third.goto(server.url)
        expect(badge(third)).to_have_text("")
        expect(badge(other)).to_have_text("")
        expect(badge(page)).to_have_text("")
    # Pushed, not polled: what the tab fetched after it loaded was event streams only.
    assert fetched and all(kind.startswith("text/event-stream") for kind in fetched), fetched


@pytest.mark.e2e
def test_another_browser_counts_from_its_own_visit(new_user, serve):
    server = serve("06_sse_progress", JOB_STEPS=2, JOB_STEP_SECONDS=0.1, HEARTBEAT=0.5)
    alice = new_user()
    alice.goto(server.url)
    first = start_job_on_page(alice)
    expect(first.get_by_role("status")).to_have_text("Done")
    bob = new_user()  # another browser, which opens the jobs page after the first job ended
    bob.goto(server.url)
    expect(badge(alice)).to_have_text("1 finished job you have not seen")
    with no_reload(bob):
        second = start_job_on_page(alice)
        expect(second.get_by_role("status")).to_have_text("Done")
        expect(badge(bob)).to_have_text("1 finished job you have not seen")
        expect(badge(alice)).to_have_text("2 finished jobs you have not seen")
