"""The jobs of steps 06 and 09, for tests and exercises: start one and read its stream over plain
HTTP, as any program outside a browser would use the contract, or start one on the page and read
its card; step 09's through nginx."""

import http.client
import re
import ssl
import threading
import time
from urllib.parse import urlsplit

from playwright.sync_api import expect

from toolkit.people import post_form, sign_up, unique


def post_job(server, origin=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", "/jobs", headers={"Origin": origin} if origin else {})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return response, body


def start_job(server) -> str:
    """Start a job and return its URL, /jobs/<id>."""
    response, _ = post_job(server)
    assert response.status == 201
    return response.getheader("Location")


class EventStream:
    """GET <job>/events with http.client, parsed field by field as the SSE format says."""

    def __init__(self, server, job_url, last_event_id=None, timeout=10):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        self.connection.request("GET", f"{job_url}/events", headers=headers)
        self.response = self.connection.getresponse()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self.response.close()  # the response holds the socket open too
        self.connection.close()

    def next_event(self) -> dict | None:
        """The next event as {field: value}, its data lines joined; None when the stream ends."""
        event = {}
        while line := self.response.readline():
            line = line.decode().rstrip("\r\n")
            if not line:
                if event:
                    return event
            elif not line.startswith(":"):  # a comment line (the heartbeat) is no field
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data" and "data" in event:
                    value = f"{event['data']}\n{value}"
                event[field] = value
        return None

    def events(self, count=None) -> list[dict]:
        """`count` events, or all of them until the stream ends."""
        found = []
        while count is None or len(found) < count:
            event = self.next_event()
            if event is None:
                break
            found.append(event)
        return found


# --- on the page ---


def log_items(card):
    return card.get_by_role("log").get_by_role("listitem")


def start_job_on_page(page):
    """Click "Start a job" and return the card the answer added."""
    cards = page.locator("article.job")
    count = cards.count()
    page.get_by_role("button", name="Start a job").click()
    expect(cards).to_have_count(count + 1)
    return cards.nth(count)


# --- step 09's jobs, through nginx ---


def start_job_as(user, stack):
    """POST /jobs from the jobs page, as its button does; the new job's id."""
    response = post_form(user.http, stack, "/jobs", "/jobs")
    assert response.status_code == 201, response.text
    return urlsplit(response.headers["Location"]).path.rsplit("/", 1)[1]


def https_connection(stack):
    """A connection to nginx with http.client, which lets a test send a request bit by bit, and
    whose responses' read1() returns what has come."""
    certificate = ssl.create_default_context(cafile=stack.certificate)
    return http.client.HTTPSConnection("localhost", stack.https_port, context=certificate)


def open_stream(stack, user, job):
    """GET the job's events through nginx."""
    connection = https_connection(stack)
    connection.request("GET", f"/jobs/{job}/events", headers={"Cookie": user.cookie})
    return connection.getresponse()


def delays_through_nginx(stack, events):
    """Start a job and read its stream through nginx until `events` events have come: for each
    event produced after the stream opened, how long (s) it took from Redis to out of nginx."""
    user = sign_up(stack, unique("streamer"))
    job = start_job_as(user, stack)
    produced = {}  # event id -> when it appeared in Redis: that is when the job produced it
    watcher = threading.Thread(target=watch_events, args=(stack, job, produced, events))
    watcher.start()
    response = open_stream(stack, user, job)
    assert response.headers["Content-Type"] == "text/event-stream"
    opened = time.monotonic()
    arrived = {}  # event id -> when its bytes came out of nginx
    while len(arrived) < events:
        chunk = response.read1().decode()
        now = time.monotonic()
        for event_id in re.findall(r"^id: (\d+)$", chunk, re.MULTILINE):
            arrived[int(event_id)] = now
    watcher.join(timeout=10)
    assert not response.isclosed()  # the stream stays open: the job has more steps
    response.close()
    # The events produced after the stream opened (the first may have been replayed).
    return {id_: arrived[id_] - produced[id_] for id_ in arrived if produced[id_] > opened}


def watch_events(stack, job, produced, count):
    """Note the moment each of the job's first `count` events appears in Redis."""
    redis, last = stack.redis(), "0-0"
    while len(produced) < count:
        for _, entries in redis.xread({f"job:{job}:events": last}, block=5000) or []:
            for entry_id, _ in entries:
                produced[int(entry_id.split("-")[0])] = time.monotonic()
                last = entry_id


def start_job_in_page(page, stack):
    """Start a job on the jobs page of step 09's stack: the URL of the job's own page."""
    page.goto(f"{stack.url}/jobs")
    page.get_by_role("button", name="Start a job").click()
    return page.get_by_role("link", name="Follow this job in another tab").get_attribute("href")


def steps_shown(page):
    return page.locator("article.job li")


def expect_progress(pages, steps=3):
    """Each page's job log gains `steps` more steps (0.2 s each), all pages at the same time."""
    counts = [steps_shown(page).count() for page in pages]
    for page, count in zip(pages, counts, strict=True):
        expect(steps_shown(page).nth(count + steps - 1)).to_be_attached()
