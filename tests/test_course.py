"""The course described once (steps.toml) is the course there is: the top README's table of steps
is the one it makes, exercises/ holds the exercises it lists, no more and no fewer, each of the
kind its files say, and every mutation of tests/mutations/ names a test that exists."""

import re

import pytest

from toolkit.course import KINDS, ROOT, find_test, load, mutations, named_test, readme_table

COURSE = load()
EXERCISES = list(COURSE.exercises.values())
# What each kind's folder holds, besides its README.md.
FILES = {
    "build": {"test_exercise.py", "solution.patch"},
    "fix-it": {"break.patch", "must_fail.txt"},
    "write-the-test": {"break.patch", "solution_test.py"},
}


def test_the_top_readme_lists_the_steps_of_steps_toml():
    readme = (ROOT / "README.md").read_text()
    assert readme_table(COURSE) in readme, "python3 -m toolkit.course table prints the table"


def test_exercises_holds_the_exercises_steps_toml_lists():
    listed = {exercise.folder for exercise in EXERCISES}
    folders = {path.name for path in (ROOT / "exercises").iterdir() if path.is_dir()}
    assert folders - {"__pycache__"} == listed


def test_exercise_ids_are_zero_padded_belong_to_their_step_and_sort():
    for step in COURSE.steps.values():
        ids = [exercise.id for exercise in step.exercises]
        assert ids == sorted(set(ids)), f"step {step.number}: {ids} out of order or twice"
        for exercise in step.exercises:
            assert re.fullmatch(rf"{step.number}-\d\d_[a-z0-9_]+", exercise.folder), exercise.folder


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.id for e in EXERCISES])
def test_each_exercise_holds_the_files_of_its_kind(exercise):
    assert exercise.kind in KINDS
    assert exercise.minutes > 0
    files = {path.name for path in exercise.path.iterdir()}
    assert FILES[exercise.kind] | {"README.md"} <= files, "a file of its kind is missing"
    others = set().union(*FILES.values()) - FILES[exercise.kind]
    assert not files & others, f"{sorted(files & others)}: files of another kind"
    if exercise.kind == "fix-it":
        find_test(named_test(exercise.path), exercise.step)


def test_every_step_has_at_least_two_exercises():
    few = [step.number for step in COURSE.steps.values() if len(step.exercises) < 2]
    assert not few, f"fewer than two exercises in steps {few}"


def test_every_mutation_names_a_test_of_its_step_that_exists():
    found = mutations()
    assert found, "tests/mutations/ holds no mutation"
    for mutation in found:
        assert mutation.step in COURSE.steps, f"{mutation.folder}: no step {mutation.step}"
        assert {"break.patch", "must_fail.txt"} <= {p.name for p in mutation.path.iterdir()}
        find_test(named_test(mutation.path), mutation.step)
