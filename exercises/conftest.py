"""The exercises' tests use the course's own test helpers: this puts tests/ on the import path and
lends them the fixtures of tests/conftest.py (`serve`, `page`, `two_users`, ...), so that an
exercise's test reads like the step's own tests."""

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

_spec = importlib.util.spec_from_file_location("course_conftest", TESTS / "conftest.py")
_course = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_course)

browser_type_launch_args = _course.browser_type_launch_args
serve = _course.serve
new_user = _course.new_user
page = _course.page
two_users = _course.two_users


def pytest_collection_modifyitems(config, items):
    _course.refuse_unmarked_browser_tests(items)
