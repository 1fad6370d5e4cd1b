"""Step 10: the jobs run in Celery workers, through a real nginx, on a stack that stops nothing.

Step 09's contract still holds (paths, events, codes, labels: the same expectations as step 09's
job tests), now with the events written by the workers; then what step 10 adds: each step says
which worker ran it, retries with backoff, failure, cancel, the push from the worker to every page
of the user, and what the workers refuse. The crashes are in the step's other test file.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from urllib.parse import urlencode, urlsplit

import pytest
import redis
from celery import Celery
from playwright.sync_api import expect

from toolkit.fixtures import need_tools
from toolkit.jobs import delays_through_nginx, https_connection, start_job_as
from toolkit.launcher import step_folder, wait_until
from toolkit.pages import sign_up_in_browser
from toolkit.people import csrf_token, post_form, sign_up
from toolkit.stack import TOOLS
from toolkit.workers import STEP, STEP_LINE, WorkerStack, expect_done, lines_of, steps_on

need_tools(*TOOLS)  # CI installs them (.ci/run)

STEPS = 10
# Jobs of 10 steps of 0.1 s; three jobs at once in each worker, so that no test waits for another's.
SETTINGS = {"JOB_STEPS": STEPS, "JOB_STEP_SECONDS": 0.1, "WORKER_CONCURRENCY": 3}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "ignore_https_errors": True}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with WorkerStack(tmp_path_factory.mktemp("jobs"), **SETTINGS) as shared:
        yield shared


def jobs_page(page, stack):
    sign_up_in_browser(page, stack)
    page.get_by_role("link", name="Jobs").click()
    return page


def start(page, fail_at=None, failures=None):
    """Start a job with the page's form (and a simulated failure); its card."""
    cards = page.locator("article.job")
    count = cards.count()
    if fail_at:
        page.get_by_text("Simulate a failure").click()
        page.get_by_label("Step that fails").fill(str(fail_at))
        page.get_by_label("Times it fails").fill(str(failures))
    page.get_by_role("button", name="Start a job").click()
    expect(cards).to_have_count(count + 1)
    return cards.nth(count)


# --- step 09's contract, the events now written by the workers ---


def test_a_workers_events_come_through_nginx_one_by_one_within_200_ms_of_being_recorded(stack):
    delays = delays_through_nginx(stack, events=6)
    assert len(delays) >= 4, "fewer than 4 events were recorded after the stream opened"
    assert max(delays.values()) < 0.2, delays
    print(
        f"{len(delays)} live events, the slowest {max(delays.values()) * 1000:.0f} ms after Redis"
    )


def test_the_job_contract_of_step_09_holds_with_workers(stack):
    alice, bob = sign_up(stack), sign_up(stack)
    response = post_form(alice.http, stack, "/jobs", "/jobs")
    assert response.status_code == 201
    job_url = urlsplit(response.headers["Location"]).path
    assert re.fullmatch(r"/jobs/[0-9a-f]{32}", job_url)  # 128 bits: no one finds it by trying
    assert f'id="job-{job_url[6:]}"' in response.text  # the card
    events = alice.http.get(f"{stack.url}{job_url}/events", timeout=30)  # until `done`
    assert events.headers["Content-Type"] == "text/event-stream"
    ids = re.findall(r"^id: (\d+)$", events.text, re.MULTILINE)
    assert ids == [str(n) for n in range(1, STEPS + 2)]  # each step, then done
    assert events.text.endswith("event: done\ndata: done\n\n")
    resumed = alice.http.get(f"{stack.url}{job_url}/events", headers={"Last-Event-ID": "7"})
    assert re.findall(r"^id: (\d+)$", resumed.text, re.MULTILINE)[0] == "8"
    last = {"Last-Event-ID": str(STEPS + 1)}
    assert alice.http.get(f"{stack.url}{job_url}/events", headers=last).status_code == 204
    for wrong in ("x", str(STEPS + 2)):
        answer = alice.http.get(f"{stack.url}{job_url}/events", headers={"Last-Event-ID": wrong})
        assert answer.status_code == 400
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert bob.http.get(f"{stack.url}{job_url}/events").status_code == 404  # not his
    assert bob.http.get(f"{stack.url}/jobs/{'0' * 32}").status_code == 404


def test_one_user_has_at_most_two_jobs_queued_or_running_on_both_servers(stack):
    alice, bob = sign_up(stack), sign_up(stack)
    form = alice.http.get(f"{stack.url}/jobs")
    body = urlencode({"csrf_token": csrf_token(form.text)}).encode()
    headers = {
        "Cookie": alice.cookie,
        "Referer": form.url,
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": len(body),
    }
    # As in step 09: eight POSTs at once, all but their last byte first, through both servers.
    connections = [https_connection(stack) for _ in range(8)]
    for connection in connections:
        connection.putrequest("POST", "/jobs")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body[:-1])
    for connection in connections:
        connection.send(body[-1:])
    answers = [connection.getresponse() for connection in connections]
    assert sorted(answer.status for answer in answers) == [201] * 2 + [429] * 6
    for answer in answers:
        if answer.status == 429:
            assert b"You have 2 jobs running, as many as one person runs at once." in answer.read()
    for connection in connections:
        connection.close()
    start_job_as(bob, stack)


# --- what the workers add ---


@pytest.mark.e2e
def test_each_step_says_which_worker_ran_it_and_the_job_ends_done(page, stack):
    card = start(jobs_page(page, stack))
    expect_done(card, STEPS)
    assert all(STEP_LINE.match(line) for line in lines_of(card))


@pytest.mark.e2e
def test_a_step_that_fails_twice_is_retried_with_backoff_and_the_job_ends_done(page, stack):
    card = start(jobs_page(page, stack), fail_at=4, failures=2)
    log = card.get_by_role("log").get_by_role("listitem")
    expect(log.filter(has_text="retrying")).to_have_text(
        [
            "Step 4 failed (a simulated failure): retrying, 2 of 3",
            "Step 4 failed (a simulated failure): retrying, 3 of 3",
        ]
    )
    expect_done(card, STEPS)


@pytest.mark.e2e
def test_a_job_that_fails_for_good_says_why_and_is_not_left_running(page, stack):
    card = start(jobs_page(page, stack), fail_at=3, failures=3)
    why = "Failed: step 3 failed (a simulated failure), 3 times"
    expect(card.get_by_role("status")).to_have_text(why)
    assert steps_on(card) == [1, 2]
    job = card.get_attribute("id").removeprefix("job-")
    assert stack.job(job)["state"] == "done"
    assert not stack.redis().zscore(f"jobs_of:{stack.job(job)['owner']}", job)  # place freed


@pytest.mark.e2e
def test_cancel_stops_a_job_between_two_steps_and_the_card_says_so(page, stack):
    page = jobs_page(page, stack)
    card = start(page)
    expect(card.get_by_role("log").get_by_role("listitem").nth(1)).to_be_attached()
    card.get_by_role("button", name="Cancel").click()
    expect(card.get_by_role("status")).to_have_text(
        re.compile(rf"^Cancelled after step (\d+) of {STEPS}$")
    )
    stopped_at = int(card.get_by_role("status").text_content().split()[3])
    assert steps_on(card) == list(range(1, stopped_at + 1)) and stopped_at < STEPS


@pytest.mark.e2e
def test_the_worker_tells_every_page_of_the_user_when_a_job_ends_and_no_one_else(two_users, stack):
    alice, bob = two_users
    sign_up_in_browser(alice, stack)
    sign_up_in_browser(bob, stack)
    chat = alice.context.new_page()  # Alice's chat page, on a socket of its own
    chat.goto(stack.url)
    expect(chat.locator("#status")).to_have_text("connected")
    alice.get_by_role("link", name="Jobs").click()
    card = start(alice)
    job = card.get_attribute("id").removeprefix("job-")
    for page in (alice, chat):
        expect(page.locator("#notice")).to_have_text(f"Job {job} ended: done.")
    expect(bob.locator("#status")).to_have_text("connected")
    assert bob.locator("#notice").text_content() == ""


def test_the_workers_refuse_a_pickled_task_and_redis_anyone_without_the_password(stack):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.ports["redis"], socket_timeout=5).llen("celery")
    # A job's keys, and a task for it sent with the password but pickled: a pickle runs code as
    # it loads. Both workers are listening; whichever takes it must refuse it.
    job = f"{time.time_ns():032x}"[-32:]
    stack.redis().hset(f"job:{job}", mapping={"owner": 0, "steps": 2, "state": "queued"})
    sender = Celery("intruder", broker=stack.redis_url, set_as_current=False)
    sender.send_task("tasks.run_job", [job], serializer="pickle")
    refused = "Refusing to deserialize untrusted content of type pickle"
    wait_until(lambda: refused in stack.output("worker1") + stack.output("worker2"), "refused")
    assert stack.job(job)["state"] == "queued"  # nothing ran it


def test_the_worker_module_imports_neither_the_web_app_nor_its_modules():
    web = ["app", "jobs", "chat", "accounts", "rooms", "registry", "flask_login"]
    check = f"import sys, tasks; print(sorted(set({web!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=step_folder(STEP),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stderr


IMPORT_THEN_CREATE = """
import os, sys, threading
from gevent import monkey
monkey.patch_all()  # as gunicorn's gevent worker does before it loads the app
umask, threads = os.umask(0o022), threading.active_count()
os.umask(umask)
for name in sys.argv[2:]:
    __import__(name)
assert os.umask(umask) == umask, "importing changed the umask"
assert not os.path.exists("instance"), "importing made the instance folder"
assert threading.active_count() == threads, "importing started a thread"
import app
config = {"INSTANCE_PATH": sys.argv[1], "SECRET_KEY": "x", "MAX_QUEUED": 3}
made = app.create_app({**config, "REDIS_URL": "redis://127.0.0.1:1/0"})  # no Redis: not needed
assert made.config["MAX_QUEUED"] == 3 and made.config["JOB_STEPS"] == 42  # config, environment
assert made.test_client().get("/login").status_code == 200
"""


def test_importing_any_module_of_step_10_does_nothing_and_create_app_takes_a_config(tmp_path):
    folder = shutil.copytree(
        step_folder(STEP), tmp_path / STEP, ignore=shutil.ignore_patterns("instance", "__pycache__")
    )
    scripts = {"gunicorn.conf", "nginx_conf"}  # the servers' scripts, not modules of the app
    modules = sorted(path.stem for path in folder.glob("*.py") if path.stem not in scripts)
    assert "tasks" in modules
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_THEN_CREATE, str(tmp_path / "instance"), *modules],
        cwd=folder,
        env={**os.environ, "JOB_STEPS": "42", "MAX_QUEUED": "7"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
