"""The exercises' tests use the course's own fixtures (`serve`, `page`, `two_users`, `connect`, ...,
toolkit/fixtures.py) and helpers (`from toolkit.people import sign_up`), so that an exercise's test
reads like the step's own tests."""

pytest_plugins = ["toolkit.fixtures"]
