"""The suite's own settings: the course's fixtures (toolkit/fixtures.py), and pytester for
tests/test_harness.py. `make test` shares the tests out among pytest-xdist's processes by module
and by class (`--dist loadscope`): a module's servers start once, in one process.

The longest scopes go first (`--no-loadscope-reorder` keeps this order): a scope with a test
marked slow (the notebooks, a frozen client, the bench), then one that drives a browser, then
the rest, which fill the processes' last minutes. (By default xdist sends the scopes with the
most tests first, and the notebooks, one long test a class, came last, with few others left to
run beside them.)"""

import pytest

pytest_plugins = ["toolkit.fixtures", "pytester"]


def scope_of(item) -> str:
    """The unit `--dist loadscope` hands out: a test's class if it has one, else its module."""
    return item.nodeid.rsplit("::", 1)[0] if item.cls else item.nodeid.split("::")[0]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    scopes = {}
    for item in items:
        scopes.setdefault(scope_of(item), []).append(item)

    def weight(scope):
        tests = scopes[scope]
        return (
            not any(test.get_closest_marker("slow") for test in tests),
            not any(test.get_closest_marker("e2e") for test in tests),
        )

    items[:] = [item for scope in sorted(scopes, key=weight) for item in scopes[scope]]
