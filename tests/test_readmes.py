"""The step READMEs: each a lesson for one sitting, and every claim in them true. No browser.

The rules, exactly as the tests below apply them.

Structure, for every step:
- The README opens with `# Step NN: <title>`; then the goal, one paragraph of one or two
  sentences; then the line `**You will learn**` and 3 to 6 bullets (`- `); then one line
  `**Time:** about N minutes · **Parent:** [...](../MM_name/) · **Previous:** [...](...) ·
  **Next:** [...](...)`, N at most 75. Parent is there exactly when steps.toml gives the step
  one, and links to it; Previous and Next link to the steps numbered one less and one more,
  where there are such steps. Every link of the line is to a folder that exists.
- Above the marked line its `##` sections are exactly, in this order: Run it; What you should
  see; The code that matters; What changed since step MM (MM: the parent; step 01 has none); The
  messages (holding a mermaid `sequenceDiagram`); Exercises. Then a line `---`, then the marked
  line `## Going further: not needed for the next step`, and after it `###` sections only.
- What you should see: its first paragraph is one sentence, the pictures come right after it,
  and every bullet names a test by its function name. Nowhere does the README name a test file
  (`tests/test_*.py`): tests move between files, their names stay.
- The code that matters: 15 to 40 lines quoted in fenced blocks with a path (see Quotes), not
  counting blank lines and `...`.
- Exercises: a link to every exercise steps.toml lists for the step, and one to exercises/
  itself.
- Bounds: at most 1,800 words above the marked line and 4,000 in all, counted as `wc -w` counts
  (code included); `make diff B=NN` adds at most 600 lines (its `+` lines but the `+++` headers),
  but for the steps of LONGER_DIFFS, each with its bound and why.

Quotes, in every step README: a fenced block whose info string has a second word, such as
```` ```python app.py ````, quotes the file that word names inside the step's folder. A line
holding only `...` cuts the block into fragments; each fragment, without the blank lines at its
ends (ruff's formatter puts some around `...`), equals consecutive lines of the file (trailing
spaces aside), and the fragments come in the file's order.

Claims, in every step README ("code" is inline code and the blocks fenced as sh or a shell):
- Links: every link target (but http(s):, mailto: and #anchors; without its #part) exists
  relative to the README.
- Paths: an inline code span is a path when it is made of letters, digits and `_.-`, parts
  joined by `/`, does not start with `/` or `.`, and ends in `/` (a folder) or in one of
  EXTENSIONS. A path holding a `/` exists in one of PATH_ROOTS (the step's folder, the
  repository, node_modules/ or a package in it, the installed Python packages), or is one git
  ignores (made when the step runs, as instance/ is). A bare file name (`_clock.html`) is the
  name of a file in the step's folder or its parent's, or of the repository's top folder.
- Tests: every word `test_...` that is not part of a file name is a function `def`ined in tests/.
- Environment variables: every ALL_CAPS name in backticks in the first column of a table whose
  header starts with "Variable", and every `NAME=` that starts a word of code (outside the
  Exercises section, where a learner adds variables the step does not read yet), is read by the
  step (`environ.get("NAME"`, `environ["NAME"]` or `getenv("NAME"` in its Python files, `$NAME`
  or `${NAME...}` in its other files) or is a variable of the Makefile (`$(NAME)`).
- Functions: every inline code span `name()` (one identifier, empty parentheses) is defined
  (`def`, `class`) or imported by name in the step's Python files, or is a `function` of a script
  in its templates or static files.
- make: every `make TARGET` in code names a rule of the Makefile (`step-%` matches `step-01`), and
  an `E=ID` after it an exercise of steps.toml.

Figures, for every step: a figure is a number followed by one of
UNITS, in prose (outside code spans and fenced blocks, and not in the Time line). Every paragraph
holding one (a table belongs to the paragraph just above it, a list item is a paragraph of its
own) names where it was measured or read: a link or code path into bench/ or notebooks/, a path
found in node_modules/ or the Python packages (a library's default, read in its source), or a
test's name. A paragraph whose every figure is a setting needs none: a setting's number is
written in the step's Python files on a line that assigns an ALL_CAPS name or passes a keyword
argument.
"""

import re
import subprocess
import sysconfig
from functools import cache
from pathlib import Path

import pytest

from toolkit.course import ROOT, load

COURSE = load()
STEPS = list(COURSE.steps.values())
MARKED_LINE = "## Going further: not needed for the next step"
MOST_MINUTES = 75
WORDS_ABOVE_THE_LINE, WORDS_IN_ALL, DIFF_LINES = 1_800, 4_000, 600
# Steps allowed a larger diff than DIFF_LINES, each with its bound and why; every other step keeps
# to DIFF_LINES. 07 is the first version with accounts and rooms: nearly every file of it is new
# since step 04 (accounts, forms, rooms, the database, the checked handlers, catch-up by id). 09
# brings nginx.conf (128 lines) and the jobs on two servers (jobs.py 171, registry.py 80)
# together, and what its capacity asks of the chat (db.py's connection per process, the line of
# messages and the busy answer past it). Neither can be smaller without cutting what the
# learner reads.
LONGER_DIFFS = {"07": 1_050, "09": 720}
QUOTED_LINES = range(15, 41)
EXTENSIONS = (".py", ".html", ".css", ".js", ".md", ".toml", ".txt", ".sql", ".ipynb", ".conf")
EXTENSIONS += (".json", ".png", ".gif", ".sh", ".cfg", ".pem", ".yml")
UNITS = r"ms|µs|us|s|seconds?|KB|kB|KiB|MB|MiB|GB|%|bytes|messages a second"
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
PATH_ROOTS = [ROOT, ROOT / "node_modules", SITE_PACKAGES]  # and the step's folder, the packages

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|^\[[^\]]+\]: (\S+)", re.M)
PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
SHELLS = {"sh", "shell", "bash", "console"}


def readme(step) -> str:
    return (step.path / "README.md").read_text()


def step_ids(step):
    return step.number


# --- reading markdown ---


def blocks(text):
    """(info string, body) of each fenced block."""
    return [(match[1].strip(), match[2]) for match in FENCE.finditer(text)]


def without_fences(text) -> str:
    """The text with each fenced block blanked out, line for line."""
    return FENCE.sub(lambda match: "\n" * match[0].count("\n"), text)


def code(text) -> list[str]:
    """The inline code spans of the prose, and the lines of its shell blocks."""
    spans = CODE_SPAN.findall(without_fences(text))
    for info, body in blocks(text):
        if info.split()[:1] and info.split()[0] in SHELLS:
            spans += body.splitlines()
    return spans


def sections(text, level="## "):
    """{heading: its text} for the headings of one level (the text up to the next of them)."""
    parts = re.split(rf"^{re.escape(level)}(.+)$", without_fences(text), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def paragraphs(text):
    """The blank-line-separated paragraphs of the prose; a table joins the paragraph above it,
    and each list item is a paragraph of its own."""
    found = []
    for chunk in re.split(r"\n[ \t]*\n", without_fences(text)):
        if chunk.lstrip().startswith("|") and found:
            found[-1] += "\n" + chunk
        else:
            found += re.split(r"\n(?=- |\d+\. )", chunk)
    return [paragraph for paragraph in found if paragraph.strip()]


def above_the_line(text) -> str:
    return text.split(f"\n---\n\n{MARKED_LINE}\n")[0]


# --- what the repository holds ---


@cache
def defined_tests() -> frozenset[str]:
    source = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    return frozenset(re.findall(r"^\s*def (test_\w+)", source, re.M))


@cache
def makefile_rules() -> tuple[str, ...]:
    text = (ROOT / "Makefile").read_text()
    return tuple(
        target for line in re.findall(r"^([\w%./ -]+):(?!=)", text, re.M) for target in line.split()
    )


def is_make_target(name) -> bool:
    return any(re.fullmatch(re.escape(rule).replace("%", ".+"), name) for rule in makefile_rules())


def step_files(step, suffixes=None):
    skip = {"vendor", "__pycache__", "instance", "pictures"}
    for path in sorted(step.path.rglob("*")):
        wanted = suffixes is None or path.suffix in suffixes
        made = skip & set(path.relative_to(step.path).parts)  # made by make or a run; pictures
        if path.is_file() and wanted and not made and path.name != "README.md":
            yield path


def path_exists(step, path) -> bool:
    if "/" not in path.rstrip("/"):  # a bare name: a file of the step's, or of its parent's
        folders = [step.path] + ([COURSE.steps[step.parent].path] if step.parent else [])
        return (ROOT / path).exists() or any(any(folder.rglob(path)) for folder in folders)
    roots = [step.path, *PATH_ROOTS, *(ROOT / "node_modules").glob("*/")]
    if any((root / path).exists() for root in roots):
        return True
    folder = "/" if path.endswith("/") else ""  # git tells a folder by its slash
    for where in (step.path / path, ROOT / path):  # made when the step runs, and ignored by git
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{where}{folder}"], cwd=ROOT)
        if ignored.returncode == 0:
            return True
    return False


def is_path(span) -> bool:
    return bool(
        PATH.fullmatch(span)
        and not span.startswith(".")  # .venv/bin/python, ../x: made or relative, not named
        and span.endswith(("/", *EXTENSIONS))
    )


# --- structure ---


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_the_first_screen_says_the_goal_what_you_will_learn_the_time_and_the_links(step):
    text = readme(step)
    title, *rest = text.split("\n\n")
    assert re.fullmatch(rf"# Step {step.number}: \S.*", title), "the first line: # Step NN: title"
    goal, learn, time_line = rest[:3]
    sentences = re.findall(r"[.!?](?:\s|$)", goal)
    assert not goal.startswith(("#", "**", "-")) and 1 <= len(sentences) <= 2, (
        "then the goal in one or two sentences"
    )
    first, *bullets = learn.split("\n")
    bullets = [line for line in bullets if not line.startswith("  ")]  # a bullet may wrap
    assert first == "**You will learn**" and all(line.startswith("- ") for line in bullets)
    assert 3 <= len(bullets) <= 6, f"{len(bullets)} bullets under You will learn"
    fields = time_line.replace("\n", " ").split(" · ")
    minutes = re.fullmatch(r"\*\*Time:\*\* about (\d+) minutes", fields[0])
    assert minutes and int(minutes[1]) <= MOST_MINUTES, "**Time:** about N minutes, N <= 75"
    links = [re.fullmatch(r"\*\*(\w+):\*\* \[[^\]]+\]\(([^)]+)\)", field) for field in fields[1:]]
    assert all(links), f"each link of the Time line: **Name:** [text](target): {fields[1:]}"
    links = dict(link.groups() for link in links)
    wanted = {
        "Parent": step.parent,
        "Previous": f"{int(step.number) - 1:02}",
        "Next": f"{int(step.number) + 1:02}",
    }
    wanted = {
        name: f"../{COURSE.steps[number].folder}/"
        for name, number in wanted.items()
        if number in COURSE.steps
    }
    assert links == wanted, "the Parent, Previous and Next links"
    for target in links.values():
        assert (step.path / target).is_dir()


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_the_sections_come_in_order_and_the_depth_after_the_marked_line(step):
    text = readme(step)
    top, marked, depth = text.partition(f"\n---\n\n{MARKED_LINE}\n")
    assert marked, f"no line '---' followed by the marked line '{MARKED_LINE}'"
    wanted = ["Run it", "What you should see", "The code that matters"]
    wanted += [f"What changed since step {step.parent}"] if step.parent else []
    wanted += ["The messages", "Exercises"]
    assert list(sections(top)) == wanted
    assert "sequenceDiagram" in "".join(
        body for info, body in blocks(top.split("\n## The messages\n")[1]) if info == "mermaid"
    ), "The messages holds a mermaid sequenceDiagram"
    assert not re.search(r"^## ", without_fences(depth), re.M), "only ### after the marked line"
    assert re.search(r"^### ", depth, re.M), "nothing after the marked line"


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_what_you_should_see_shows_its_pictures_first_and_names_a_test_for_each_line(step):
    text = readme(step)
    section = sections(above_the_line(text))["What you should see"]
    first, pictures, *rest = [part for part in section.split("\n\n") if part.strip()]
    assert len(re.findall(r"[.!?](?:\s|$)", first)) == 1, "the section opens with one sentence"
    assert pictures.lstrip().startswith("!["), "the pictures come right after the first sentence"
    items = [p for p in paragraphs("\n\n".join(rest)) if p.lstrip().startswith("- ")]
    assert items, "no bullets"
    for item in items:
        assert re.search(r"\btest_\w+", item), f"this line names no test: {item[:60]!r}"
    assert not re.search(r"tests/test_\w+\.py", text), "name tests, not test files"


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_the_code_that_matters_quotes_15_to_40_lines(step):
    section = readme(step).split("\n## The code that matters\n")[1].split("\n## ")[0]
    quoted = [
        line
        for info, body in blocks(section)
        if len(info.split()) > 1
        for line in body.splitlines()
        if line.strip() not in ("", "...")
    ]
    assert len(quoted) in QUOTED_LINES, f"{len(quoted)} lines quoted"


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_the_exercises_link_each_exercise_and_the_rest(step):
    section = sections(above_the_line(readme(step)))["Exercises"]
    targets = {target.rstrip("/") for target, _ in LINK.findall(section)}
    for exercise in step.exercises:
        assert f"../../exercises/{exercise.folder}" in targets, f"no link to {exercise.folder}"
    assert "../../exercises" in targets, "no link to exercises/ for the rest"


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_the_readme_is_read_in_one_sitting(step):
    text = readme(step)
    above = len(above_the_line(text).split())
    assert above <= WORDS_ABOVE_THE_LINE, f"{above} words above the marked line"
    assert len(text.split()) <= WORDS_IN_ALL, f"{len(text.split())} words in all"


@pytest.mark.parametrize("step", [s for s in STEPS if s.parent], ids=step_ids)
def test_make_diff_adds_at_most_diff_lines(step):
    diff = subprocess.run(
        ["make", "-s", "diff", f"B={step.number}"], cwd=ROOT, capture_output=True, text=True
    )
    assert diff.returncode == 0, diff.stderr
    added = [line for line in diff.stdout.splitlines() if line.startswith("+")]
    added = [line for line in added if not line.startswith("+++")]
    most = LONGER_DIFFS.get(step.number, DIFF_LINES)
    assert len(added) <= most, f"make diff B={step.number} adds {len(added)} lines"


# --- quotes ---


def quotes(step):
    """(path, fragments) of each block that quotes a file of the step."""
    for info, body in blocks(readme(step)):
        if len(info.split()) > 1:
            fragments = re.split(r"^[ \t]*\.\.\.[ \t]*\n", body, flags=re.M)
            yield info.split()[1], [fragment.strip("\n").splitlines() for fragment in fragments]


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_quote_is_the_file_it_names_line_for_line(step):
    for path, fragments in quotes(step):
        assert (step.path / path).is_file(), f"a quote of {path}, which the step does not have"
        lines = [line.rstrip() for line in (step.path / path).read_text().splitlines()]
        start = 0
        for fragment in fragments:
            fragment = [line.rstrip() for line in fragment]
            found = [
                at
                for at in range(start, len(lines) - len(fragment) + 1)
                if lines[at : at + len(fragment)] == fragment
            ]
            assert fragment and found, f"not in {path} (after line {start}):\n" + "\n".join(
                fragment
            )
            start = found[0] + len(fragment)


# --- claims ---


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_link_and_every_path_named_in_code_exists(step):
    text = readme(step)
    for inline, reference in LINK.findall(without_fences(text)):
        target = (inline or reference).split("#")[0]
        if target and not re.match(r"https?:|mailto:", target):
            assert (step.path / target).exists(), f"a link to {target}, which is not there"
    for span in CODE_SPAN.findall(without_fences(text)):
        if is_path(span):
            assert path_exists(step, span), f"`{span}` is not there"


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_test_named_is_defined_in_tests(step):
    names = re.findall(r"(?<![\w/])(test_\w+)\b(?!\.py)", readme(step))
    unknown = sorted(set(names) - defined_tests())
    assert not unknown, f"no such tests: {unknown}"


def variables_claimed(text) -> set[str]:
    text = re.sub(r"^## Exercises\n.*?(?=^## |\Z)", "", text, flags=re.M | re.S)
    names = set()
    for table in re.findall(r"^\| *Variable *\|.*?(?=\n(?!\|))", without_fences(text), re.M | re.S):
        names |= set(re.findall(r"^\| *`([A-Z][A-Z0-9_]*)`", table, re.M))
    for span in code(text):
        names |= set(re.findall(r"(?<!\S)([A-Z][A-Z0-9_]*)=", span))
    return names


def read_by(step, name) -> bool:
    for path in step_files(step):
        text = path.read_text(errors="replace")
        if path.suffix == ".py":
            pattern = rf"(environ\.get\(|environ\[|getenv\()\s*[\"']{name}[\"']"
        else:
            pattern = rf"\$\{{?{name}\b"
        if re.search(pattern, text):
            return True
    return f"$({name})" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_environment_variable_named_is_read_by_the_step_or_make(step):
    unread = sorted(name for name in variables_claimed(readme(step)) if not read_by(step, name))
    assert not unread, f"the step does not read {unread}"


def names_in(step) -> set[str]:
    names = set()
    for path in step_files(step, {".py"}):
        text = path.read_text()
        names |= set(re.findall(r"^\s*(?:def|class) (\w+)", text, re.M))
        for imported in re.findall(r"^\s*(?:from \S+ )?import ([\w, ()\n]+)", text, re.M):
            names |= set(re.findall(r"\w+", imported)) - {"as"}
    for path in step_files(step, {".html", ".js"}):
        names |= set(re.findall(r"\bfunction (\w+)", path.read_text()))
    return names


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_function_named_is_defined_or_imported_in_the_step(step):
    called = set(re.findall(r"^(\w+)\(\)$", "\n".join(CODE_SPAN.findall(readme(step))), re.M))
    unknown = sorted(called - names_in(step))
    assert not unknown, f"step {step.number} has no {unknown}"


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_make_command_names_a_target_and_an_exercise_that_exist(step):
    exercises = set(COURSE.exercises)
    for line in code(readme(step)):
        for target, arguments in re.findall(r"\bmake ([a-z][\w%-]*)((?: +[A-Z]+=\S+)*)", line):
            assert is_make_target(target), f"make {target}: the Makefile has no such target"
            for exercise in re.findall(r"\bE=([\w-]+)", arguments):
                assert exercise in exercises, f"E={exercise}: no such exercise"


# --- figures ---

FIGURE = re.compile(rf"(?<![\w.,])(\d[\d,]*(?:\.\d+)?)\s?(?:{UNITS})(?![\w])")


def settings_of(step) -> set[str]:
    numbers = set()
    for path in step_files(step, {".py"}):
        for line in path.read_text().splitlines():
            if re.match(r"\s*[A-Z][A-Z0-9_]* *=(?!=)", line) or re.search(
                r"\b[a-z_]\w*=(?!=)", line
            ):
                numbers |= set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?", line))
    return numbers


def cites_a_measurement(step, paragraph) -> bool:
    if re.search(r"\btest_\w+", paragraph) or re.search(r"(bench|notebooks)/", paragraph):
        return True
    for span in CODE_SPAN.findall(paragraph):
        in_a_library = [
            SITE_PACKAGES / span,
            ROOT / "node_modules" / span.removeprefix("node_modules/"),
            *(ROOT / "node_modules").glob(f"*/{span}"),
        ]
        if is_path(span) and "/" in span and any(path.exists() for path in in_a_library):
            return True
    return False


def uncited_figures(step) -> list[str]:
    settings = settings_of(step)
    found = []
    for paragraph in paragraphs(readme(step)):
        if paragraph.startswith("**Time:**"):
            continue
        prose = CODE_SPAN.sub("", paragraph)
        figures = [number.replace(",", "") for number in FIGURE.findall(prose)]
        if figures and not set(figures) <= settings and not cites_a_measurement(step, paragraph):
            found.append(paragraph.strip()[:100])
    return found


@pytest.mark.parametrize("step", STEPS, ids=step_ids)
def test_every_measured_figure_says_where_it_was_measured(step):
    uncited = uncited_figures(step)
    assert not uncited, "figures that say neither where they were measured nor are a setting:\n" + (
        "\n".join(uncited)
    )
