"""`make test-exercises`: prove every exercise of steps.toml and every mutation of tests/mutations/
on fresh copies of its step.

- build (solution.patch, test_exercise.py): its test fails on the step and passes once the
  solution is applied;
- fix-it, and a mutation (break.patch, must_fail.txt): the step's test named in must_fail.txt
  (toolkit.course.find_test finds it) passes on the step and fails once the defence is removed;
- write-the-test (break.patch, solution_test.py): our test passes on the step and fails once the
  defence is removed.

The step's side of every proof comes from one pytest run per step on an untouched copy, which
runs all the tests of tests/ its exercises and mutations name at once; the first proof of a step
that needs it makes it, the others (in any pytest-xdist process) wait for it and read its
outcomes. A test that run did not see as wanted runs again alone before the proof fails, as an
exercise's own test always does.
Each patched copy belongs to one proof and runs that proof's test alone. A broken outcome (an
error, a skip, a timeout: toolkit/checks.py) fails the proof whichever outcome was wanted.
"""

import fcntl
import json
from pathlib import Path

import pytest

from toolkit.checks import apply, copy_step, outcome_of, run_tests
from toolkit.course import ROOT, find_test, load, mutations, named_test

COURSE = load()


def proof(folder: Path, step: str, kind: str) -> dict:
    """What one exercise or mutation must show: the test, the patch, and the outcome wanted on
    the untouched step (the patched copy must show the other)."""
    step_folder = COURSE.step(step).folder
    if kind == "build":
        test, patch, untouched = folder / "test_exercise.py", folder / "solution.patch", "failed"
    elif kind == "write-the-test":
        test, patch, untouched = folder / "solution_test.py", folder / "break.patch", "passed"
    else:
        test, patch, untouched = None, folder / "break.patch", "passed"
    return {
        "step": step,
        "test": find_test(named_test(folder), step_folder)
        if test is None
        else str(test.relative_to(ROOT)),
        "patch": patch,
        "untouched": untouched,
        "patched": "passed" if untouched == "failed" else "failed",
    }


PROOFS = {
    exercise.folder: proof(exercise.path, exercise.step, exercise.kind)
    for exercise in COURSE.exercises.values()
} | {f"mutation-{m.folder}": proof(m.path, m.step, "mutation") for m in mutations()}
# Steps taken in turn, so that the first proofs the processes take need different steps.
ORDER = sorted(
    PROOFS,
    key=lambda name: (
        [p for p in PROOFS if PROOFS[p]["step"] == PROOFS[name]["step"]].index(name),
        PROOFS[name]["step"] not in ("09", "10", "08"),  # the longest steps first
        PROOFS[name]["step"],
    ),
)


@pytest.fixture(scope="session")
def shared(tmp_path_factory, worker_id):
    """A folder every pytest-xdist process of this run sees."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if worker_id != "master" else base


def untouched_copy(step: str, shared: Path) -> Path:
    """The untouched copy of a step, made once for the whole run (nothing patches it)."""
    folder = shared / f"untouched-{step}"
    with open(shared / f"untouched-{step}-copy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():  # copied whole, then named: never seen half made
            copy_step(COURSE.step(step).path, shared / f"copying-{step}")
            (shared / f"copying-{step}").rename(folder)
    return folder / COURSE.step(step).folder


def untouched_outcomes(step: str, shared: Path) -> dict[str, str]:
    """The outcomes of every test of tests/ that the step's proofs name, in one pytest run on the
    untouched copy: made once (under a lock), read by every proof of the step. (An exercise's
    own test runs alone, on a copy of its own: two files named test_exercise.py cannot share a
    run.)"""
    results = shared / f"untouched-{step}.json"
    folder = untouched_copy(step, shared)
    with open(shared / f"untouched-{step}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not results.exists():
            tests = sorted(
                {p["test"] for p in PROOFS.values() if p["step"] == step}
                - {p["test"] for p in PROOFS.values() if not p["test"].startswith("tests/")}
            )
            results.write_text(json.dumps(run_tests(tests, COURSE.step(step).folder, folder)))
    return json.loads(results.read_text())


# The step's run does many tests, each of which may take up to its own timeout (pyproject.toml).
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", ORDER)
def test_is_proven(name, shared, tmp_path):
    wanted = PROOFS[name]
    step, test = COURSE.step(wanted["step"]), wanted["test"]
    if test.startswith("tests/"):
        outcomes = untouched_outcomes(wanted["step"], shared)
    if not test.startswith("tests/") or outcome_of(test, outcomes) != wanted["untouched"]:
        # An exercise's own test; or a test the step's run did not see as wanted (a test that
        # measures time may fail on a machine that runs many at once): alone, on a fresh copy.
        outcomes = run_tests([test], step.folder, copy_step(step.path, tmp_path / "untouched"))
    found = outcome_of(test, outcomes)
    assert found == wanted["untouched"], (
        f"{test} on the step: {found}, not {wanted['untouched']}\n{getattr(outcomes, 'why', '')}"
    )
    patched = copy_step(step.path, tmp_path / "patched")
    apply(wanted["patch"], patched)
    outcomes = run_tests([test], step.folder, patched, "-x")
    found = outcome_of(test, outcomes)
    assert found == wanted["patched"], (
        f"{test} with {wanted['patch'].name}: {found}, not {wanted['patched']}\n{outcomes.why}"
    )
