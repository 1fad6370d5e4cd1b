"""The learner's commands for exercises/ (the Makefile calls them):

    python -m toolkit.progress list        make exercises    every exercise and its state
    python -m toolkit.progress start ID    make exercise     a copy of the step in work/ID/
    python -m toolkit.progress check ID    make check        the exercise's check, on work/ID/
    python -m toolkit.progress watch ID    make watch        the check again on every save
    python -m toolkit.progress solution ID make solution     one solution, as a diff

An exercise is "not started" until work/ID/ exists, "started" after, and "done" once its check
passed on the copy as it is now: a passing check writes a hash of the copy into work/.done/ID,
so an edit after it shows the exercise as started again. WORK (default: work/) moves the copies.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from toolkit.checks import apply, copy_step, failing, overall, run_tests
from toolkit.course import ROOT, Exercise, find_test, load, named_test

COURSE = load()
LEFT_OUT = ("__pycache__", "instance", ".pytest_cache")
STARTER = '''"""Your test for exercise {id}: see {readme}.

It must pass on the step and fail once the defence is removed (`make check E={id}` tries both).
The course's fixtures are yours to use (toolkit/fixtures.py: serve, in_process, page, ...).
"""


def test_mine():
    raise NotImplementedError("write your test here")
'''


def work() -> Path:
    return Path(os.environ.get("WORK", ROOT / "work")).resolve()


def copy_of(exercise: Exercise) -> Path:
    return work() / exercise.id


def exercise_named(id: str) -> Exercise:
    if id not in COURSE.exercises:
        sys.exit(f"No exercise {id!r}. One of: {' '.join(COURSE.exercises)} (make exercises)")
    return COURSE.exercises[id]


def fingerprint(folder: Path) -> str:
    """A hash of every file of the copy (but what running it makes)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not set(path.relative_to(folder).parts) & set(LEFT_OUT):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stamp(exercise: Exercise) -> Path:
    return work() / ".done" / exercise.id


def state(exercise: Exercise) -> str:
    copy = copy_of(exercise)
    if not copy.is_dir():
        return "not started"
    done = stamp(exercise).is_file() and stamp(exercise).read_text() == fingerprint(copy)
    return "done" if done else "started"


def list_exercises() -> None:
    print(f"{'id':<6} {'step':<22} {'kind':<15} {'minutes':>7}  state")
    for exercise in COURSE.exercises.values():
        step = COURSE.step(exercise.step).folder
        print(
            f"{exercise.id:<6} {step:<22} {exercise.kind:<15} {exercise.minutes:>7}  "
            f"{state(exercise)}"
        )


def start(exercise: Exercise) -> None:
    copy, step = copy_of(exercise), COURSE.step(exercise.step)
    if copy.exists():
        sys.exit(f"{copy}/ is already there: work in it, or delete it to start again.")
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(step.path, copy, ignore=shutil.ignore_patterns(*LEFT_OUT))
    readme = exercise.path.relative_to(ROOT) / "README.md"
    if exercise.kind == "fix-it":
        apply(exercise.path / "break.patch", copy)
        print(f"{copy}/ is step {step.folder} with a defence removed: read {readme}.")
    elif exercise.kind == "write-the-test":
        (copy / "test_mine.py").write_text(STARTER.format(id=exercise.id, readme=readme))
        print(f"{copy}/ is a copy of step {step.folder}: write your test in its test_mine.py,")
        print(f"as {readme} says.")
    else:
        print(f"{copy}/ is a copy of step {step.folder}: do {readme} there.")
    print(f"Serve it: HOST=127.0.0.1 PORT=5000 .venv/bin/python {copy}/app.py")
    print(f"Check it: make check E={exercise.id}   On every save: make watch E={exercise.id}")


def check(exercise: Exercise) -> list[str]:
    """Run the exercise's check on the learner's copy: what still fails (nothing: done)."""
    copy, step = copy_of(exercise), COURSE.step(exercise.step)
    if not copy.is_dir():
        sys.exit(f"No {copy}/ yet: make exercise E={exercise.id}")
    before = fingerprint(copy)
    if exercise.kind == "write-the-test":
        still = check_own_test(exercise, copy / "test_mine.py")
    else:
        if exercise.kind == "build":
            test = str((exercise.path / "test_exercise.py").relative_to(ROOT))
        else:
            test = find_test(named_test(exercise.path), step.folder)
        still = failing(run_tests([test], step.folder, copy))
    stamp(exercise).unlink(missing_ok=True)
    if not still:
        stamp(exercise).parent.mkdir(parents=True, exist_ok=True)
        stamp(exercise).write_text(before)
    return still


def check_own_test(exercise: Exercise, test: Path) -> list[str]:
    """A test written by the learner must pass on the step and fail with the defence removed."""
    step = COURSE.step(exercise.step)
    with tempfile.TemporaryDirectory() as scratch:
        untouched = copy_step(step.path, Path(scratch) / "untouched")
        broken = copy_step(step.path, Path(scratch) / "broken")
        apply(exercise.path / "break.patch", broken)
        runs = {
            folder: run_tests([str(test)], step.folder, folder, "-p", "toolkit.fixtures")
            for folder in (untouched, broken)
        }
    on_step, without_defence = overall(runs[untouched]), overall(runs[broken])
    still = [
        f"on the step it must pass: {node} {result}"
        for node, result in runs[untouched].items()
        if on_step != "passed" and result != "passed"
    ]
    if without_defence != "failed":
        did = "passed" if without_defence == "passed" else "did not run (an error, or no test)"
        still.append(f"with the defence removed it must fail, and it {did}")
    return still


def report(exercise: Exercise, still: list[str]) -> None:
    if still:
        print(f"{exercise.id}: not yet. Still failing:")
        for line in still:
            print(f"  {line}")
    else:
        print(f"{exercise.id}: done, the check passes.")


def watch(exercise: Exercise) -> None:
    """The check now, then again each time a file of the copy is saved (until Ctrl-C)."""
    import watchfiles

    copy = copy_of(exercise)

    def ours(change, path: str) -> bool:
        return not set(Path(path).relative_to(copy).parts) & {*LEFT_OUT, ".git"}

    sys.stdout.reconfigure(line_buffering=True)  # each line as it comes, even into a file
    print(f"Watching {copy}/ (Ctrl-C stops).")
    report(exercise, check(exercise))
    print("Waiting for a save...")
    for _ in watchfiles.watch(copy, watch_filter=ours, raise_interrupt=False):
        print(f"Saved: checking {exercise.id} again.")
        report(exercise, check(exercise))
        print("Waiting for a save...")


def solution(exercise: Exercise) -> None:
    """A build's solution.patch; a fix-it's defence put back (break.patch the other way round);
    a write-the-test's own test."""
    if exercise.kind == "build":
        print((exercise.path / "solution.patch").read_text(), end="")
    elif exercise.kind == "write-the-test":
        print((exercise.path / "solution_test.py").read_text(), end="")
    else:
        print(defence_put_back(exercise), end="")


def defence_put_back(exercise: Exercise) -> str:
    """The diff from the broken copy to the step, made by diff from the files themselves."""
    step = COURSE.step(exercise.step)
    patch = exercise.path / "break.patch"
    files = [
        line.split()[1].split("/", 1)[1]
        for line in patch.read_text().splitlines()
        if line.startswith("+++ ")
    ]
    with tempfile.TemporaryDirectory() as scratch:
        broken = copy_step(step.path, Path(scratch))
        apply(patch, broken)
        diffs = [
            subprocess.run(
                [
                    "diff",
                    "-uN",
                    "--label",
                    f"a/{name}",
                    "--label",
                    f"b/{name}",
                    str(broken / name),
                    str(step.path / name),
                ],
                capture_output=True,
                text=True,
            ).stdout
            for name in files
        ]
    return "".join(diffs)


def main(argv: list[str]) -> None:
    commands = {"start": start, "check": check, "watch": watch, "solution": solution}
    if argv == ["list"]:
        list_exercises()
    elif len(argv) == 2 and argv[0] in commands:
        exercise = exercise_named(argv[1])
        if argv[0] == "check":
            still = check(exercise)
            report(exercise, still)
            sys.exit(1 if still else 0)
        commands[argv[0]](exercise)
    else:
        sys.exit("usage: python -m toolkit.progress list | {start,check,watch,solution} ID")


if __name__ == "__main__":
    main(sys.argv[1:])
