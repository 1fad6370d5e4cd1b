"""The suite's own settings: the course's fixtures (toolkit/fixtures.py), pytester for
tests/test_harness.py, and how the tests are shared out among pytest-xdist's processes."""

pytest_plugins = ["toolkit.fixtures", "pytester"]


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # a pytest-xdist process
        longest_groups_first(items)


def group_of(nodeid):
    """The group a test runs in under `make test`: its file and tier (browser tests, the rest),
    its notebook, or in test_pages its step (a server per class). A group runs in one process, so
    a shared server starts at most twice. (Browser tests carry Playwright's [chromium] in their
    id.)"""
    path, *rest = nodeid.split("::")
    if path.endswith("test_notebooks.py"):
        return nodeid
    if path.endswith("test_pages.py"):
        return f"{path}::{rest[0]}"
    return f"{path} e2e" if "[chromium" in nodeid else path


def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadscope`, pytest-xdist hands out whole scopes: let the groups be the scopes.
    (Its own `--dist loadgroup` renames tests, which pytest 9 no longer lets a plugin do.)"""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LoadGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid)

    return LoadGroupScheduling(config, log)


def longest_groups_first(items):
    """Order the tests so that the groups that take longest are handed out first, and no process
    is left with a long one at the end: a notebook, a browser test or a slow one takes seconds,
    most other tests a fraction of one. (`--no-loadscope-reorder` keeps this order.)"""
    cost = {}
    for item in items:
        seconds = 20 if "test_notebooks.py" in item.nodeid else 0.5
        if item.get_closest_marker("e2e") or item.get_closest_marker("slow"):
            seconds = max(seconds, 5)
        group = group_of(item.nodeid)
        cost[group] = cost.get(group, 0) + seconds
    items.sort(key=lambda item: -cost[group_of(item.nodeid)])  # stable: a file keeps its order
