"""The suite's own settings: the course's fixtures (toolkit/fixtures.py), and pytester for
tests/test_harness.py. `make test` shares the tests out among pytest-xdist's processes by module
and by class (`--dist loadscope`): a module's servers start once, in one process."""

pytest_plugins = ["toolkit.fixtures", "pytester"]
