"""The course described once (steps.toml) is the course there is: the top README's table of steps
is the one it makes, and exercises/ holds the exercises it lists, no more and no fewer."""

from toolkit.course import ROOT, load, readme_table

COURSE = load()


def test_the_top_readme_lists_the_steps_of_steps_toml():
    readme = (ROOT / "README.md").read_text()
    assert readme_table(COURSE) in readme, "python3 -m toolkit.course table prints the table"


def test_exercises_holds_the_exercises_steps_toml_lists():
    listed = {exercise for step in COURSE.steps.values() for exercise in step.exercises}
    folders = {path.name for path in (ROOT / "exercises").iterdir() if path.is_dir()}
    assert folders - {"__pycache__"} == listed
