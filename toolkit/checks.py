"""Running a step's tests on a copy of the step, and reading what each test did.

The learner's `make check` and the prover (exercises/prove.py) share these: copy a step, apply a
patch to the copy, run pytest with the step's servers started from the copy (the environment
names it: `STEP_FOLDER_<step>`, see toolkit/launcher.py), and read each test's outcome.

Each run writes the outcome of every test to a JSON file (this module is also the small pytest
plugin that writes it: `-p toolkit.checks`). An outcome is "passed", "failed", or "broken": an
error in a fixture (no browser, say), a skip, or a test stopped by pytest-timeout proves nothing,
so a broken test never counts as the failure a proof wants.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from toolkit.course import ROOT

OUTCOMES_FILE = "CHECKS_OUTCOMES"  # the environment variable naming the JSON file


def copy_step(step: Path, into: Path) -> Path:
    """A copy of the step as a learner would have it: its vendor files, none of its state."""
    return Path(
        shutil.copytree(
            step, into / step.name, ignore=shutil.ignore_patterns("__pycache__", "instance")
        )
    )


def apply(patch: Path, folder: Path) -> None:
    """Apply a patch inside the copy as a learner would (`patch -p1`), after checking that it
    applies, so that a half-applied patch never runs."""
    for check in (["--dry-run"], []):
        done = subprocess.run(
            ["patch", "-p1", "--batch", "--forward", "--input", str(patch), *check],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"{patch} does not apply in {folder}:\n{done.stdout}")


class Outcomes(dict):
    """Each test's node id -> its outcome; `why` holds, for a test that did not pass, the last
    line of its report (the assertion or the error), to say what still fails."""

    why: dict[str, str]


def run_tests(tests: list[str], step: str, folder: Path, *options: str) -> Outcomes:
    """pytest on `tests` (files or node ids, from the repository's root), with step `step`'s
    servers started from `folder`: each test's outcome."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "outcomes.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *tests,
                "-p",
                "toolkit.checks",
                "-p",
                "no:cacheprovider",
                "-q",
                *options,
            ],
            cwd=ROOT,
            env={**os.environ, f"STEP_FOLDER_{step}": str(folder), OUTCOMES_FILE: str(report)},
            capture_output=True,
            text=True,
        )
        found = json.loads(report.read_text()) if report.exists() else {}
    outcomes = Outcomes(found.get("outcomes", {}))
    outcomes.why = found.get("why", {})
    if not outcomes:  # nothing ran: say why
        outcomes.update({test: "broken" for test in tests})
        outcomes.why = {test: f"{done.stdout[-2000:]}{done.stderr[-2000:]}" for test in tests}
    return outcomes


def outcome_of(test: str, outcomes: dict[str, str]) -> str:
    """The outcome of a test named by its node id or its file (all its tests), over all its
    parameters when the name has none: broken if any is broken, else failed if any failed, else
    passed; broken if none ran."""
    return overall(
        {
            node: result
            for node, result in outcomes.items()
            if node == test or node.startswith((test + "[", test + "::"))
        }
    )


def overall(outcomes: dict[str, str]) -> str:
    """The outcome of a whole run: broken if any test is broken or none ran, else failed if any
    failed, else passed."""
    found = list(outcomes.values())
    if not found or "broken" in found:
        return "broken"
    return "failed" if "failed" in found else "passed"


def failing(outcomes: Outcomes) -> list[str]:
    """The tests of a run that did not pass, each with the first line of why."""
    return [
        f"{node}\n      {outcomes.why.get(node, result)}".rstrip()
        for node, result in outcomes.items()
        if result != "passed"
    ]


# --- the pytest plugin (-p toolkit.checks): each test's outcome, into the JSON file ---

_outcomes: dict[str, str] = {}
_why: dict[str, str] = {}


def pytest_runtest_logreport(report):
    timed_out = report.failed and "Failed: Timeout" in str(report.longrepr)
    if report.when == "call" and report.failed and not timed_out:
        _outcomes[report.nodeid] = "failed"
    elif report.failed or report.skipped:
        _outcomes[report.nodeid] = "broken"
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")
    if report.failed or report.skipped:
        lines = [line for line in str(report.longrepr).splitlines() if line.startswith("E ")]
        _why.setdefault(report.nodeid, (lines or [str(report.longrepr)[-300:]])[0][:300])


def pytest_sessionfinish(session):
    path = os.environ.get(OUTCOMES_FILE)
    if path and not hasattr(session.config, "workerinput"):
        Path(path).write_text(json.dumps({"outcomes": _outcomes, "why": _why}, indent=1))
