"""The rate limit on messages: SEND_BURST at once, then SEND_RATE a second, per user.

Each user has one token bucket (`SendLimit`, step 03's), shared by all their tabs: a second tab
brings no second budget. chat.py asks `allow_send` before it stores a message; the app's config
says how big the buckets are. This module imports no other module of the step.
"""

import threading
import time

from flask import current_app


class SendLimit:
    """A token bucket: `burst` messages at once, then `rate` a second; rate 0 means no limit."""

    def __init__(self, burst: int, rate: float):
        self.burst = self.tokens = burst
        self.rate = rate
        self.last = time.monotonic()
        self.lock = threading.Lock()  # so that two threads may call allow() at once

    def allow(self) -> bool:
        if not self.rate:
            return True
        with self.lock:
            now = time.monotonic()
            # The bucket refills with time, up to `burst`; each message takes one token.
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


buckets_lock = threading.Lock()  # for the buckets of every app in this process


def allow_send(user_id):
    # One bucket per user, whichever tab sends. Two tabs' events run in two threads at once, so
    # the bucket is looked up and made under the lock: two first messages must not make two.
    config = current_app.config
    with buckets_lock:
        buckets = current_app.extensions.setdefault("send_limits", {})  # user id -> SendLimit
        if user_id not in buckets:
            buckets[user_id] = SendLimit(config["SEND_BURST"], config["SEND_RATE"])
        limit = buckets[user_id]
    return limit.allow()
