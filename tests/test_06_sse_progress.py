"""Step 06: jobs whose progress streams over Server-Sent Events, resumed without a gap."""

import contextlib
import http.client
import itertools
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import psutil
import pytest
from playwright.sync_api import expect

from toolkit.jobs import EventStream, log_items, post_job, start_job, start_job_on_page
from toolkit.launcher import StepServer, wait_until
from toolkit.pages import RECONNECT_TIMEOUT, no_reload

STEPS = 5  # JOB_STEPS of the shared server
LOST = "This job was lost when the server restarted: jobs live in its memory. Start a new one."
JOB_URL = re.compile(r"^/jobs/[0-9a-f]{8}$")

# Runs in each page before its own scripts: the reason htmx gave when it closed a stream.
RECORD_STREAM_CLOSE = """
document.addEventListener("htmx:sse:close", (event) => {
  window.__streamClosed = event.detail.reason;
});
"""


def shared_server(tmp_path_factory, **env):
    """Step 06 on a free port, for the tests of this module that need these settings."""
    with StepServer("06_sse_progress", tmp_path_factory.mktemp("logs"), **env) as server:
        yield server


@pytest.fixture(scope="module")
def job_server(tmp_path_factory):
    """Short jobs, shared by every test that only starts jobs and reads them."""
    yield from shared_server(
        tmp_path_factory, JOB_STEPS=STEPS, JOB_STEP_SECONDS=0.2, HEARTBEAT=0.5, MAX_JOBS=50
    )


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory):
    """Jobs whose first step takes an hour: their streams carry nothing but heartbeats."""
    yield from shared_server(tmp_path_factory, JOB_STEP_SECONDS=3600, HEARTBEAT=0.5, MAX_JOBS=50)


@pytest.fixture(scope="module")
def one_job_server(tmp_path_factory):
    """One job at a time (a second one is refused while it runs), one finished job kept.

    Every test that starts a job here reads it to the end, so the next test finds the server idle.
    """
    yield from shared_server(
        tmp_path_factory, JOB_STEPS=3, JOB_STEP_SECONDS=0.3, MAX_JOBS=1, KEEP_FINISHED=1
    )


def ids(events):
    return [int(event["id"]) for event in events]


def run_to_end(server, job_url) -> list[dict]:
    with EventStream(server, job_url) as stream:
        return stream.events()


# --- the wire contract ---


def test_post_jobs_answers_201_with_location_and_the_card_the_page_swaps_in(job_server):
    response, card = post_job(job_server)
    assert response.status == 201
    job_url = response.getheader("Location")
    assert JOB_URL.match(job_url)
    assert f'hx-sse:connect="{job_url}/events"' in card
    assert 'hx-sse:close="done"' in card
    # The card is the page's fragment; /jobs/<id> is a whole page with that card in it.
    connection = http.client.HTTPConnection("127.0.0.1", job_server.port, timeout=10)
    connection.request("GET", job_url)
    page = connection.getresponse()
    assert page.status == 200
    assert f'hx-sse:connect="{job_url}/events"' in page.read().decode()
    run_to_end(job_server, job_url)


def test_a_stream_numbers_its_events_from_1_without_gap_and_ends_with_done(job_server):
    job_url = start_job(job_server)
    with EventStream(job_server, job_url) as stream:
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type") == "text/event-stream"
        assert stream.response.getheader("Cache-Control") == "no-cache"
        assert stream.response.getheader("X-Accel-Buffering") == "no"
        events = stream.events()
    assert ids(events) == list(range(1, STEPS + 2))
    *steps, done = events
    job_id = job_url.rsplit("/", 1)[1]
    for step, event in enumerate(steps, start=1):
        assert "event" not in event
        assert event["retry"] == "1000"
        # Out-of-band HTML fragments, addressed to this job's elements by id.
        assert f'<progress id="job-{job_id}-progress" max="{STEPS}" value="{step}"' in event["data"]
        log_line = f'hx-swap-oob="beforeend:#job-{job_id}-log"><li>Step {step} of {STEPS} done</li>'
        assert log_line in event["data"]
    assert done["event"] == "done"


def test_last_event_id_k_gets_exactly_the_events_after_k_then_the_live_ones(job_server):
    job_url = start_job(job_server)
    with EventStream(job_server, job_url) as watcher:
        first_three = watcher.events(3)
        # The job is still running: the resumed stream replays 2, 3 and whatever else was sent,
        # then follows the rest as it comes.
        with EventStream(job_server, job_url, last_event_id=1) as resumed:
            assert ids(resumed.events()) == list(range(2, STEPS + 2))
        rest = watcher.events()
    reference = first_three + rest
    assert ids(reference) == list(range(1, STEPS + 2))
    with EventStream(job_server, job_url, last_event_id=1) as again:  # the same events, replayed
        assert again.events() == reference[1:]


def test_a_finished_job_answers_204_to_its_last_id_and_the_rest_to_earlier_ids(job_server):
    job_url = start_job(job_server)
    events = run_to_end(job_server, job_url)
    last = len(events)
    with EventStream(job_server, job_url, last_event_id=last) as stream:
        assert stream.response.status == 204
        assert stream.response.read() == b""
    with EventStream(job_server, job_url, last_event_id=last - 1) as stream:
        assert stream.events() == events[-1:]  # just `done`
    with EventStream(job_server, job_url, last_event_id=0) as stream:
        assert stream.events() == events


def test_an_unknown_job_is_404(job_server):
    for path in ["/jobs/0badc0de", "/jobs/0badc0de/events"]:
        connection = http.client.HTTPConnection("127.0.0.1", job_server.port, timeout=10)
        connection.request("GET", path)
        assert connection.getresponse().status == 404


@pytest.mark.parametrize(
    ("last_event_id", "reason"),
    [
        ("abc", "must be the id of an event"),
        ("-1", "must be the id of an event"),
        ("2.5", "must be the id of an event"),
        ("1" * 5000, "must be the id of an event"),
        (
            STEPS + 2,
            f"Last-Event-ID {STEPS + 2} was never sent: this job has sent {STEPS + 1} events.",
        ),
    ],
    ids=["letters", "negative", "fraction", "5000 digits", "beyond the last event"],
)
def test_a_bad_last_event_id_is_400_with_a_short_plain_text_reason(
    job_server, last_event_id, reason
):
    job_url = start_job(job_server)
    run_to_end(job_server, job_url)
    with EventStream(job_server, job_url, last_event_id=last_event_id) as stream:
        assert stream.response.status == 400
        assert stream.response.getheader("Content-Type") == "text/plain; charset=utf-8"
        assert reason in stream.response.read().decode()


def test_a_last_event_id_beyond_a_running_jobs_events_is_400(quiet_server):
    job_url = start_job(quiet_server)  # its first event is an hour away
    with EventStream(quiet_server, job_url, last_event_id=1) as stream:
        assert stream.response.status == 400
        assert "this job has sent 0 events" in stream.response.read().decode()


def test_a_heartbeat_comment_comes_every_heartbeat_while_nothing_else_is_sent(quiet_server):
    heartbeat = 0.5  # quiet_server's HEARTBEAT
    job_url = start_job(quiet_server)  # its first event is an hour away
    with EventStream(quiet_server, job_url) as stream:
        arrivals = []
        for _ in range(3):
            assert stream.response.readline() == b": heartbeat\n"
            assert stream.response.readline() == b"\n"
            arrivals.append(time.monotonic())
    # The first comes at once (the response starts without waiting), the next ones a heartbeat
    # apart: not a busy loop, and not so far apart that a proxy would call the stream idle.
    for earlier, later in itertools.pairwise(arrivals):
        assert heartbeat / 2 < later - earlier < heartbeat + 4


def test_a_client_that_leaves_frees_its_thread_within_two_heartbeats(serve):
    heartbeat = 0.5
    server = serve("06_sse_progress", JOB_STEP_SECONDS=3600, HEARTBEAT=heartbeat)
    process = psutil.Process(server.process.pid)
    job_url = start_job(server)
    # A server of its own, so every thread is known: the main thread and the job's, once the
    # threads that served the start-up probe and the POST are gone; then the stream's.
    wait_until(lambda: process.num_threads() == 2, "the main thread and the job's thread")
    stream = EventStream(server, job_url)
    assert stream.response.readline() == b": heartbeat\n"
    assert process.num_threads() == 3
    stream.close()
    # Nothing is published for an hour: only a heartbeat's failed write can end the stream. The
    # first write after the client left still succeeds (the kernel takes it), the second fails.
    wait_until(
        lambda: process.num_threads() == 2,
        "the stream's thread has ended",
        timeout=2 * heartbeat + 3,
    )


# --- bounded and safe ---


def test_at_most_max_jobs_run_at_once_and_a_finished_one_frees_its_place(one_job_server):
    job_url = start_job(one_job_server)
    refused, alert = post_job(one_job_server)
    assert refused.status == 429
    assert "1 jobs are running, as many as this server runs at once" in alert
    assert '<p id="error" role="alert" hx-swap-oob="true">' in alert  # the page's alert
    run_to_end(one_job_server, job_url)
    run_to_end(one_job_server, start_job(one_job_server))


def test_only_the_last_keep_finished_jobs_are_kept(one_job_server):
    oldest = start_job(one_job_server)
    run_to_end(one_job_server, oldest)
    kept = start_job(one_job_server)
    run_to_end(one_job_server, kept)
    with EventStream(one_job_server, oldest) as stream:
        assert stream.response.status == 404
    with EventStream(one_job_server, kept, last_event_id=0) as stream:
        assert ids(stream.events()) == [1, 2, 3, 4]


def test_a_post_from_another_site_is_refused_with_403_and_starts_no_job(one_job_server):
    for origin in ["http://evil.example", f"http://localhost:{one_job_server.port}", "null"]:
        refused, reason = post_job(one_job_server, origin=origin)
        assert refused.status == 403, origin
        assert "from this site's own page only" in reason
    # Only one job may run at a time, so none of the refused posts started one.
    run_to_end(one_job_server, start_job(one_job_server))


def test_a_post_from_the_page_itself_or_from_a_script_without_origin_is_accepted(job_server):
    for origin in [job_server.url, None]:
        response, _ = post_job(job_server, origin=origin)
        assert response.status == 201


# --- in the browser ---


@pytest.mark.e2e
def test_a_page_from_another_site_cannot_read_a_stream_and_its_post_is_refused(
    new_context, job_server
):
    # localhost and 127.0.0.1 are two sites to a browser, though the same server here. (No
    # OriginGuard: reaching another origin is what this page is for.)
    page = new_context().new_page()
    page.goto(f"http://localhost:{job_server.port}/")
    job_url = start_job(job_server)
    own_site = job_server.url
    read, posted = page.evaluate(
        """async ([stream, jobs]) => {
          let read = "read";
          try { await (await fetch(stream)).text(); } catch (error) { read = error.name; }
          // A form on any site can post like this; the answer is opaque to the page.
          const posted = await fetch(jobs, {method: "POST", mode: "no-cors"});
          return [read, posted.type];
        }""",
        [f"{own_site}{job_url}/events", f"{own_site}/jobs"],
    )
    assert read == "TypeError"  # the browser withheld the answer: no Access-Control-Allow-Origin
    assert posted == "opaque"
    # The post did reach the server, with the other site's Origin, and was refused.
    # (The request log is coloured, hence the \S* around the request line.)
    assert re.search(r'"\S*POST /jobs HTTP/1.1\S*" 403 ', job_server.output())
    run_to_end(job_server, job_url)


def every_step(steps):
    return [f"Step {step} of {steps} done" for step in range(1, steps + 1)]


def job_url_of(card) -> str:
    return "/jobs/" + card.get_attribute("id").removeprefix("job-")


def stream_answers(page) -> list[tuple[str, int, str | None]]:
    """Record (path, status, Last-Event-ID sent) for every answer to a page's stream requests."""
    answers = []

    def record(response):
        if response.url.endswith("/events"):
            last_event_id = response.request.all_headers().get("last-event-id")
            answers.append((urlsplit(response.url).path, response.status, last_event_id))

    page.on("response", record)
    return answers


@pytest.mark.e2e
def test_a_job_reaches_100_percent_with_every_step_once_without_reload(page, job_server):
    page.add_init_script(RECORD_STREAM_CLOSE)
    page.goto(job_server.url)
    with no_reload(page):
        card = start_job_on_page(page)
        expect(card.get_by_role("status")).to_have_text("Done")
        expect(log_items(card)).to_have_text(every_step(STEPS))
        expect(card.get_by_role("progressbar")).to_have_attribute("value", str(STEPS))
    # The page closed the stream itself, on the event named done.
    page.wait_for_function("window.__streamClosed === 'message'")


@pytest.mark.e2e
def test_two_jobs_at_once_each_show_only_their_own_progress(page, serve):
    # Jobs of 3 s: the second starts long before the first ends, even on a busy machine.
    server = serve("06_sse_progress", JOB_STEPS=STEPS, JOB_STEP_SECONDS=0.6)
    page.goto(server.url)
    # The order in which log lines appear on the page, across both cards.
    page.evaluate("""() => {
      window.__appended = [];
      new MutationObserver((records) => records.forEach((record) => record.addedNodes.forEach(
        (node) => node.tagName === "LI" && __appended.push(record.target.id)
      ))).observe(document.getElementById("jobs"), {childList: true, subtree: true});
    }""")
    first = start_job_on_page(page)
    second = start_job_on_page(page)
    for card in (first, second):
        expect(card.get_by_role("status")).to_have_text("Done")
        expect(log_items(card)).to_have_text(every_step(STEPS))
        expect(card.get_by_role("progressbar")).to_have_attribute("value", str(STEPS))
    appended = page.evaluate("window.__appended")
    first_log, second_log = (
        card.get_by_role("log").get_by_role("list").get_attribute("id") for card in [first, second]
    )
    # They ran at once: the second job's first step came before the first job's last.
    assert appended.index(second_log) < len(appended) - 1 - appended[::-1].index(first_log)


@pytest.mark.e2e
def test_a_plain_event_source_receives_every_event_once_then_stops_at_204(page, job_server):
    answers = stream_answers(page)
    page.goto(job_server.url)
    page.evaluate("""async () => {
      const answer = await fetch("/jobs", {method: "POST"});
      window.__received = [];
      window.__source = new EventSource(answer.headers.get("Location") + "/events");
      __source.onmessage = (event) => __received.push(event.lastEventId);
      __source.addEventListener("done", (event) => __received.push("done " + event.lastEventId));
    }""")
    # After done the server ends the stream; EventSource comes back with Last-Event-ID, gets 204,
    # and gives up for good (readyState CLOSED).
    page.wait_for_function("window.__source.readyState === EventSource.CLOSED")
    last = str(STEPS + 1)
    assert page.evaluate("window.__received") == [*map(str, range(1, STEPS + 1)), f"done {last}"]
    assert [(status, sent) for _path, status, sent in answers] == [(200, None), (204, last)]


@pytest.mark.e2e
def test_without_hx_sse_close_htmx_keeps_asking_a_finished_job_despite_204(page, job_server):
    # Why the card needs hx-sse:close="done": htmx 4 takes 204 for a successful reconnect.
    page.goto(job_server.url)
    job_url = start_job(job_server)
    page.evaluate(
        """(stream) => {
          const element = document.createElement("div");
          element.setAttribute("hx-sse:connect", stream);
          document.body.append(element);
          htmx.process(element);
        }""",
        f"{job_url}/events",
    )
    for _ in range(2):  # the end of the stream, a 204, and again a second later
        with page.expect_response(lambda response: response.status == 204):
            pass


@pytest.mark.e2e
def test_a_refused_job_shows_the_reason_and_adds_no_card(page, serve):
    # One job at a time, of 2.4 s: the second click comes long before the first job ends.
    server = serve("06_sse_progress", JOB_STEPS=3, JOB_STEP_SECONDS=0.8, MAX_JOBS=1)
    page.goto(server.url)
    running = start_job_on_page(page)
    page.get_by_role("button", name="Start a job").click()
    expect(page.locator("#error")).to_have_text(
        "1 jobs are running, as many as this server runs at once. Try again when one is done."
    )
    expect(page.locator("article.job")).to_have_count(1)
    expect(running.get_by_role("status")).to_have_text("Done")
    start_job_on_page(page)
    expect(page.locator("#error")).to_have_text("")
    expect(page.locator("article.job").last.get_by_role("status")).to_have_text("Done")


class CuttableRelay:
    """A TCP relay between the browser and a server; cut() drops every open connection at once,
    as a network that fails mid-stream does, without either side saying goodbye."""

    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                with self.lock:
                    self.open |= {client, server}
                for source, sink in [(client, server), (server, client)]:
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source, sink):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        self._drop([source, sink])

    def _drop(self, sockets):
        with self.lock:
            self.open -= set(sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self):
        with self.lock:
            sockets = list(self.open)
        self._drop(sockets)

    def close(self):
        self.listener.close()
        self.cut()


@pytest.mark.e2e
def test_a_connection_dropped_mid_job_resumes_and_the_log_has_every_step_once_in_order(page, serve):
    steps = 10
    server = serve("06_sse_progress", JOB_STEPS=steps, JOB_STEP_SECONDS=0.25)
    relay = CuttableRelay(server.port)
    answers = stream_answers(page)
    try:
        page.goto(relay.url)
        with no_reload(page):
            card = start_job_on_page(page)
            expect(log_items(card).nth(2)).to_be_attached()
            relay.cut()
            expect(card.get_by_role("status")).to_have_text("Done", timeout=RECONNECT_TIMEOUT)
            expect(log_items(card)).to_have_text(every_step(steps))
    finally:
        relay.close()
    # The page came back once, with the id of the last event it had, in the middle of the job.
    (_, status, sent), (_, status_again, resumed_from) = answers
    assert (status, sent, status_again) == (200, None, 200)
    assert 3 <= int(resumed_from) < steps


@pytest.mark.e2e
def test_a_hidden_tab_pauses_its_stream_and_catches_up_with_every_step_when_shown(page, serve):
    # A job of 2 s: the tab is hidden long before it ends, on a busy machine too.
    steps = 20
    server = serve("06_sse_progress", JOB_STEPS=steps, JOB_STEP_SECONDS=0.1, HEARTBEAT=0.5)
    answers = stream_answers(page)
    page.goto(server.url)
    card = start_job_on_page(page)
    expect(log_items(card).first).to_be_attached()
    job_url = job_url_of(card)
    # A headless page is never hidden, so the test tells htmx that the tab went to the background.
    set_hidden = """(hidden) => {
      Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
      document.dispatchEvent(new Event("visibilitychange"));
    }"""
    with no_reload(page):
        page.evaluate(set_hidden, True)
        run_to_end(server, job_url)  # the job finishes while the tab is hidden
        # The page stopped reading when it was hidden (the steps it had read by then, it still
        # shows, so count them now): the job is done, the page is not.
        seen_when_hidden = log_items(card).count()
        assert seen_when_hidden < steps
        expect(card.get_by_role("status")).not_to_have_text("Done")
        page.evaluate(set_hidden, False)
        expect(card.get_by_role("status")).to_have_text("Done")
        expect(log_items(card)).to_have_text(every_step(steps))
    # Shown again, it asked for the steps after the last one it had shown.
    assert [(status, sent) for _path, status, sent in answers] == [
        (200, None),
        (200, str(seen_when_hidden)),
    ]


@pytest.mark.e2e
def test_after_a_restart_the_page_says_its_job_was_lost_and_new_jobs_run(page, serve):
    server = serve("06_sse_progress", JOB_STEPS=10, JOB_STEP_SECONDS=0.3)
    answers = stream_answers(page)
    page.goto(server.url)
    with no_reload(page):
        lost = start_job_on_page(page)
        expect(log_items(lost).nth(1)).to_be_attached()
        server.restart()
        expect(lost.get_by_role("alert")).to_have_text(LOST, timeout=RECONNECT_TIMEOUT)
        expect(lost.get_by_role("status")).not_to_have_text("Done")
        # A job started after the restart runs to the end; it takes long enough (3 s) that
        # another reconnect of the lost job's stream would have come meanwhile.
        new = start_job_on_page(page)
        expect(new.get_by_role("status")).to_have_text("Done")
    # Its stream: the first answer, then nothing while the server was down (the fetches failed),
    # then one 404, and no reconnect after it.
    lost_stream = job_url_of(lost) + "/events"
    assert [status for path, status, _sent in answers if path == lost_stream] == [200, 404]


@pytest.mark.e2e
def test_a_seventh_page_gets_no_event_while_six_http_1_1_streams_are_open(new_user, serve):
    server = serve("06_sse_progress", JOB_STEPS=1000, JOB_STEP_SECONDS=0.2, MAX_JOBS=10)
    first = new_user()
    pages = [first, *(first.context.new_page() for _ in range(6))]  # one browser context
    for page in pages:
        page.goto(server.url)
    cards = [start_job_on_page(page) for page in pages[:6]]
    seventh = pages[6]
    seventh.get_by_role("button", name="Start a job").click()
    # While the six streams flow (three more steps each), the seventh page's POST waits in the
    # browser for a free connection: the server never sees it, and the page gets no card.
    for card in cards:
        expect(log_items(card).nth(log_items(card).count() + 2)).to_be_attached()
    assert server.output().count("POST /jobs") == 6
    expect(seventh.locator("article.job")).to_have_count(0)
    pages[0].close()
    card = seventh.locator("article.job")
    expect(log_items(card).first).to_be_attached()
