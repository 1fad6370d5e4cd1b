"""The course described once: steps.toml, read for Python and for make.

`python3 -m toolkit.course make` prints the Makefile's step variables (make includes them);
`python3 -m toolkit.course table` prints the step table of the top README; `python3 -m
toolkit.course find-test NAME [STEP]` the node id of the test of that name. Only the standard
library: make runs this before the virtual environment exists.

Exercises (exercises/NN-KK_slug/) are listed in steps.toml, each with its kind and minutes;
mutations (tests/mutations/NN-slug/: a defence removed, and the test that must then fail) are
found by their folders.
"""

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Graft:
    """Files a step takes from a step other than its parent (step 09's jobs, from 06)."""

    source: str  # the step's number
    takes: tuple[str, ...]  # compared with the source's by `make diff`
    carries: tuple[str, ...]  # of those, the ones carried unchanged


KINDS = ("build", "fix-it", "write-the-test")


@dataclass(frozen=True)
class Exercise:
    """A learner's exercise: exercises/<folder>/. Its files say how it is proven:
    - build: test_exercise.py fails on the step and passes with solution.patch;
    - fix-it: break.patch removes a defence; the step's test named in must_fail.txt passes on
      the step and fails with the patch (the learner puts the defence back);
    - write-the-test: break.patch removes a defence; the learner's test (solution_test.py is
      ours) passes on the step and fails with the patch."""

    folder: str  # e.g. 03-01_history_in_sqlite
    kind: str  # one of KINDS
    minutes: int  # about how long it takes

    @property
    def id(self) -> str:
        """What `make ... E=` takes: 03-01."""
        return self.folder.split("_")[0]

    @property
    def path(self) -> Path:
        return ROOT / "exercises" / self.folder

    @property
    def step(self) -> str:
        return self.folder[:2]


@dataclass(frozen=True)
class Mutation:
    """tests/mutations/<folder>/: break.patch removes one defence of step NN (the folder's first
    two characters), and the test named in must_fail.txt must then fail. Not an exercise: a
    proof that the step's tests catch the removal."""

    folder: str  # e.g. 03-no_rate_limit

    @property
    def path(self) -> Path:
        return ROOT / "tests" / "mutations" / self.folder

    @property
    def step(self) -> str:
        return self.folder[:2]


def mutations() -> list[Mutation]:
    folder = ROOT / "tests" / "mutations"
    return [Mutation(path.name) for path in sorted(folder.iterdir()) if path.is_dir()]


def named_test(folder: Path) -> str:
    """The test a break.patch must make fail, by name (must_fail.txt)."""
    return (folder / "must_fail.txt").read_text().strip()


@dataclass(frozen=True)
class Step:
    folder: str  # e.g. 03_chat
    name: str  # e.g. chat
    title: str
    parent: str | None  # the parent's number
    carries: tuple[str, ...]
    vendor: tuple[str, ...]
    exercises: tuple[Exercise, ...]
    graft: Graft | None = None

    @property
    def number(self) -> str:
        return self.folder[:2]

    @property
    def path(self) -> Path:
        return ROOT / "steps" / self.folder

    @property
    def sources(self) -> dict[str, tuple[str, ...]]:
        """The step each file comes from -> the files carried from it unchanged."""
        found = {self.parent: self.carries} if self.parent else {}
        if self.graft:
            found[self.graft.source] = self.graft.carries
        return found


@dataclass(frozen=True)
class Course:
    steps: dict[str, Step]  # by number, in order
    helpers: dict[str, list[str]] = field(default_factory=dict)

    def step(self, number_or_folder: str) -> Step:
        return self.steps[number_or_folder[:2]]

    @property
    def exercises(self) -> dict[str, Exercise]:
        """Every exercise by its id (03-01), in order."""
        return {ex.id: ex for step in self.steps.values() for ex in step.exercises}


def load(path: Path = ROOT / "steps.toml") -> Course:
    data = tomllib.loads(path.read_text())
    numbers = {entry["folder"]: entry["folder"][:2] for entry in data["step"]}
    steps = {}
    for entry in data["step"]:
        graft = entry.get("graft")
        step = Step(
            folder=entry["folder"],
            name=entry["name"],
            title=entry["title"],
            parent=numbers[entry["parent"]] if "parent" in entry else None,
            carries=tuple(entry.get("carries", ())),
            vendor=tuple(entry.get("vendor", ())),
            exercises=tuple(
                Exercise(item["id"], item["kind"], item["minutes"])
                for item in entry.get("exercises", ())
            ),
            graft=graft
            and Graft(numbers[graft["from"]], tuple(graft["takes"]), tuple(graft["carries"])),
        )
        steps[step.number] = step
    return Course(steps, data.get("helpers", {}))


def find_test(name: str, step: str = "") -> str:
    """The pytest node id of a test of tests/ named by its function (and its class, if it has
    one), with its parameters if given: `test_x[03_chat]` -> `tests/test_chat_pages.py::test_x
    [03_chat]`. Where several files define it, the one of `step`: tests/test_NN_*.py with the
    highest NN up to the step's (a test that runs on steps 07 and 08 lives in a test_07_ file).
    Exercises name tests this way, so that a test may move between files."""
    *cls, function = name.split("[")[0].split("::")
    wanted = re.compile(
        rf"^class {cls[0]}\b.*?^    def {function}\(" if cls else rf"^def {function}\(",
        re.MULTILINE | re.DOTALL,
    )
    found = [
        path
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if wanted.search(path.read_text())
    ]
    numbered = [path for path in found if re.match(r"test_\d\d_", path.name)]
    if len(found) > 1 and step:
        up_to_step = [path.name[5:7] for path in numbered if path.name[5:7] <= step[:2]]
        found = [path for path in numbered if up_to_step and path.name[5:7] == max(up_to_step)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} test files define {name}, not one")
    return f"{found[0].relative_to(ROOT)}::{name}"


def make_variables(course: Course) -> str:
    """The Makefile's view of the course: one variable per fact."""
    lines = [f"step_numbers := {' '.join(course.steps)}"]
    for number, step in course.steps.items():
        lines.append(f"step_dir_{number} := steps/{step.folder}")
        lines.append(f"vendor_{number} := {' '.join(step.vendor)}")
        if step.parent:
            lines.append(f"parent_{number} := {step.parent}")
        if step.graft:
            lines.append(f"grafts_{number} := {step.graft.source} {' '.join(step.graft.takes)}")
    lines.append(f"exercise_ids := {' '.join(course.exercises)}")
    return "\n".join(lines) + "\n"


def readme_table(course: Course) -> str:
    rows = ["| Step | What it adds | Run it |", "| --- | --- | --- |"]
    for number, step in course.steps.items():
        link = f"[{number} {step.name}](steps/{step.folder}/)"
        rows.append(f"| {link} | {step.title} | `make step-{number}` |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    what = {"make": make_variables, "table": readme_table}
    if sys.argv[1:2] == ["find-test"] and len(sys.argv) in (3, 4):
        print(find_test(*sys.argv[2:]))
    elif len(sys.argv) == 2 and sys.argv[1] in what:
        sys.stdout.write(what[sys.argv[1]](load()))
    else:
        sys.exit(f"usage: python3 -m toolkit.course {{{','.join(what)}}} | find-test NAME [STEP]")
