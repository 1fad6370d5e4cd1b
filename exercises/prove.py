"""`make test-exercises`: prove every exercise on fresh copies of its step.

- A build exercise (`solution.patch`, `test_exercise.py`): its test fails on the untouched step
  and passes once the solution is applied.
- A break-it exercise (`break.patch`, `must_fail.txt`): the step's test named in `must_fail.txt`
  (by its name: toolkit.course.find_test finds its file) passes on the untouched step and fails
  once the defence is removed.

The exercises are the ones steps.toml lists for each step. Each check runs pytest in a subprocess
on a copy of the step, which the environment points the launcher at (`STEP_FOLDER_<step>`, see
toolkit/launcher.py). The untouched copy of a step is shared by the exercises a process proves; a
patched copy belongs to one exercise.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.course import ROOT, find_test, load

COURSE = load()
EXERCISES = [
    ROOT / "exercises" / exercise for step in COURSE.steps.values() for exercise in step.exercises
]


def step_of(exercise: Path) -> Path:
    """The step folder an exercise belongs to."""
    return COURSE.exercise_step(exercise.name).path


def copy_step(step: Path, into: Path) -> Path:
    """A copy of the step as a learner would have it: its vendor files, none of its state."""
    return Path(
        shutil.copytree(
            step, into / step.name, ignore=shutil.ignore_patterns("__pycache__", "instance")
        )
    )


def apply(patch: Path, folder: Path) -> None:
    """Apply a patch inside the copy as a learner would (`patch -p1`); fail loudly if it does not
    apply, and first check that it applies, so a half-applied patch never runs."""
    for check in (["--dry-run"], []):
        done = subprocess.run(
            ["patch", "-p1", "--batch", "--forward", "--input", str(patch), *check],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"{patch.relative_to(ROOT)} does not apply:\n{done.stdout}"


def run_tests(test: str, step: Path, folder: Path) -> subprocess.CompletedProcess:
    """pytest on `test` (a file or a node id, from the repository's root), with the step's
    servers started from `folder`."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", test, "-p", "no:cacheprovider", "-q", "-x"],
        cwd=ROOT,
        env={**os.environ, f"STEP_FOLDER_{step.name}": str(folder)},
        capture_output=True,
        text=True,
    )


def outcome(done: subprocess.CompletedProcess) -> str:
    """Passed, failed, or broken: an error in a fixture (no browser, say) or while collecting, no
    test found, or a test that hung until pytest-timeout stopped it proves nothing, so a broken
    run fails the proof whichever outcome was wanted."""
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode == 0:
        return "passed"
    if done.returncode == 1 and " error" not in summary and "Failed: Timeout" not in done.stdout:
        return "failed"
    return "broken"


def expect_outcome(done: subprocess.CompletedProcess, wanted: str, what: str) -> None:
    found = outcome(done)
    assert found == wanted, f"{what}: {found}, not {wanted}\n{done.stdout[-3000:]}{done.stderr}"


@pytest.fixture(scope="session")
def untouched(tmp_path_factory):
    """The untouched copy of each step, made once per process and shared (nothing patches it)."""
    copies = {}

    def copy_of(step: Path) -> Path:
        if step not in copies:
            copies[step] = copy_step(step, tmp_path_factory.mktemp("untouched"))
        return copies[step]

    return copy_of


# Two runs of pytest, each of whose tests may take up to its own timeout (pyproject.toml).
@pytest.mark.timeout(300)
@pytest.mark.parametrize("exercise", EXERCISES, ids=[folder.name for folder in EXERCISES])
def test_exercise_is_proven(exercise, untouched, tmp_path):
    step = step_of(exercise)
    patched = copy_step(step, tmp_path)
    if (exercise / "break.patch").exists():
        test = find_test((exercise / "must_fail.txt").read_text().strip(), step.name)
        expect_outcome(run_tests(test, step, untouched(step)), "passed", f"{test} on the step")
        apply(exercise / "break.patch", patched)
        expect_outcome(run_tests(test, step, patched), "failed", f"{test} with break.patch")
    else:
        test = str((exercise / "test_exercise.py").relative_to(ROOT))
        expect_outcome(run_tests(test, step, untouched(step)), "failed", f"{test} on the step")
        apply(exercise / "solution.patch", patched)
        expect_outcome(run_tests(test, step, patched), "passed", f"{test} with solution.patch")
