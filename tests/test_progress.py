"""The learner's exercise commands (toolkit/progress.py, behind make exercises, exercise, check,
watch and solution) on a real copy: fix-it 01-02 (a huge message), whose check is one test of
step 01 that needs no browser. Each test has its own work folder (WORK)."""

import os
import signal
import subprocess
import sys

import pytest

from toolkit.course import ROOT
from toolkit.launcher import wait_until

EXERCISE = "01-02"


def progress(work, *args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "toolkit.progress", *args],
        cwd=ROOT,
        env={**os.environ, "WORK": str(work)},
        capture_output=True,
        text=True,
        check=check,
    )


def state_of(work, exercise=EXERCISE):
    (line,) = [
        line for line in progress(work, "list").stdout.splitlines() if line.startswith(exercise)
    ]
    return line.split("  ")[-1].strip()


def put_the_defence_back(work):
    defence = progress(work, "solution", EXERCISE).stdout
    subprocess.run(
        ["patch", "-s", "-p1"], input=defence, text=True, cwd=work / EXERCISE, check=True
    )


@pytest.mark.slow
def test_an_exercise_goes_from_not_started_to_started_to_done_and_back_after_an_edit(tmp_path):
    assert state_of(tmp_path) == "not started"
    progress(tmp_path, "start", EXERCISE)
    assert state_of(tmp_path) == "started"
    failing = progress(tmp_path, "check", EXERCISE, check=False)
    assert failing.returncode == 1
    assert "test_oversized_frame_closes_only_that_connection_with_1009" in failing.stdout
    assert state_of(tmp_path) == "started"
    put_the_defence_back(tmp_path)
    assert progress(tmp_path, "check", EXERCISE).returncode == 0
    assert state_of(tmp_path) == "done"
    with open(tmp_path / EXERCISE / "app.py", "a") as app:
        app.write("# an edit after the check\n")
    assert state_of(tmp_path) == "started"


@pytest.mark.slow
def test_watch_checks_again_when_a_file_of_the_copy_is_saved(tmp_path):
    progress(tmp_path, "start", EXERCISE)
    output = tmp_path / "watch.txt"
    with open(output, "w") as out:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "toolkit.progress", "watch", EXERCISE],
            cwd=ROOT,
            env={**os.environ, "WORK": str(tmp_path)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def printed():
            assert watcher.poll() is None, f"the watcher stopped:\n{output.read_text()}"
            return output.read_text()

        wait_until(lambda: "Waiting for a save" in printed(), "the first check", timeout=60)
        assert "01-02: not yet. Still failing:" in printed()
        assert "test_oversized_frame_closes_only_that_connection_with_1009" in printed()
        put_the_defence_back(tmp_path)
        wait_until(lambda: "done, the check passes" in printed(), "a check after the save", 60)
        assert "Saved: checking 01-02 again." in printed()
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)
    assert state_of(tmp_path) == "done"


@pytest.mark.slow
def test_a_test_written_by_the_learner_must_pass_on_the_step_and_fail_without_the_defence(
    tmp_path,
):
    exercise = "03-06"  # write the test: the length limit of step 03
    progress(tmp_path, "start", exercise)
    mine = tmp_path / exercise / "test_mine.py"
    mine.write_text("def test_mine():\n    pass\n")  # passes everywhere: it catches nothing
    too_weak = progress(tmp_path, "check", exercise, check=False)
    assert too_weak.returncode == 1
    assert "with the defence removed it must fail, and it passed" in too_weak.stdout
    assert "on the step it must pass" not in too_weak.stdout
    mine.write_text("def test_mine():\n    assert False\n")  # fails everywhere
    too_strict = progress(tmp_path, "check", exercise, check=False)
    assert "on the step it must pass" in too_strict.stdout
    mine.write_text(progress(tmp_path, "solution", exercise).stdout)
    assert progress(tmp_path, "check", exercise).returncode == 0
    assert state_of(tmp_path, exercise) == "done"
