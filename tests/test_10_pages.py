"""Step 10's pages in the states its README shows, checked as every step's are (toolkit.pictures:
axe-core, the keyboard), and photographed with PICTURES=1 (`make pictures STEP=10`): a job handed
from one worker to the other after a kill, as a film; a retried step; the notice that the worker
sends to every page of the user."""

import pytest
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.pages import sign_in_in_browser, sign_up_in_browser
from toolkit.pictures import (
    Film,
    check_accessibility,
    check_keyboard,
    save_picture,
    side_by_side,
    tab_to,
)
from toolkit.stack import TOOLS
from toolkit.workers import PICKED_UP, STEP, WorkerStack, expect_done, lines_of

pytestmark = pytest.mark.e2e  # every test here drives a browser


# The Content-Security-Policy allows no inline script: these contexts bypass it to inject
# axe-core (the pages still send it), and accept the self-signed certificate.
@pytest.mark.browser_context_args(ignore_https_errors=True, bypass_csp=True)
class TestStep10Workers:
    STEP = STEP

    def test_a_job_moves_to_the_other_worker_when_its_worker_is_killed(self, page, tmp_path):
        need_tools(*TOOLS)
        settings = {"JOB_STEPS": 6, "JOB_STEP_SECONDS": 0.5, "VISIBILITY_TIMEOUT": 4}
        with WorkerStack(tmp_path, **settings) as stack:
            sign_up_in_browser(page, stack, "erin")
            page.get_by_role("link", name="Jobs").click()
            check_accessibility(page)
            check_keyboard(page)
            tab_to(page, page.get_by_role("button", name="Start a job"))
            page.keyboard.press("Enter")
            card = page.locator("article.job")
            log = card.get_by_role("log").get_by_role("listitem")
            film = Film()
            expect(log).to_have_count(1)
            job = card.get_attribute("id").removeprefix("job-")
            film.shoot(card)
            expect(log).to_have_count(2)
            film.shoot(card)
            worker = stack.job(job)["worker"]
            stack.kill_worker(worker)  # the whole worker: its job waits for the timeout
            expect(log.filter(has_text="after a crash")).to_have_count(1, timeout=20_000)
            film.shoot(card)
            while log.count() < 7:  # six steps and the line about the crash
                shown = log.count()
                expect(log).not_to_have_count(shown)
                film.shoot(card)
            expect_done(card, 6)
            film.shoot(card)
            (picked_up,) = [PICKED_UP.match(line) for line in lines_of(card) if "crash" in line]
            assert picked_up[1] != worker
            check_accessibility(page)
            film.save(self.STEP, "handover.gif", 900)

    def test_a_retried_step_and_the_notice_on_every_page_of_the_user(self, two_users, tmp_path):
        need_tools(*TOOLS)
        jobs, chat = two_users  # two browsers, one of them signs in again: the same user
        side_by_side(jobs, chat)
        settings = {"JOB_STEPS": 6, "JOB_STEP_SECONDS": 0.1, "RETRY_DELAY": 0.3}
        with WorkerStack(tmp_path, **settings) as stack:
            sign_up_in_browser(jobs, stack, "frank")
            jobs.get_by_role("link", name="Jobs").click()
            sign_in_in_browser(chat, stack, "frank")  # on the chat page, connected
            jobs.get_by_text("Simulate a failure").click()
            jobs.get_by_label("Step that fails").fill("4")
            jobs.get_by_label("Times it fails").fill("2")
            check_accessibility(jobs)
            jobs.get_by_role("button", name="Start a job").click()
            card = jobs.locator("article.job")
            expect_done(card, 6)
            job = card.get_attribute("id").removeprefix("job-")
            assert sum("retrying" in line for line in lines_of(card)) == 2
            check_accessibility(jobs)
            save_picture(self.STEP, "retries.png", card)
            for page in (jobs, chat):
                expect(page.locator("#notice")).to_have_text(f"Job {job} ended: done.")
            check_accessibility(chat)
            save_picture(self.STEP, "told.png", chat.locator("main"), jobs.locator("main"))
