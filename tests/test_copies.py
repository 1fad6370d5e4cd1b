"""Copies stay true: what a step carries from the step it grows from is that step's, byte for byte.

steps.toml says, for each step, its parent, the files it carries from it unchanged (`carries`),
and for step 09 the files it takes from step 06 (`graft`): one byte of difference fails, and so
does a file that is identical to the other step's but not listed, so the lists are exactly the
truth. `[helpers]` does the same for the functions and classes carried in files that do change,
in Python and in the pages' JavaScript: each group of steps shares one spelling, word for word.
No browser, no server: this runs in a second.
"""

import ast
import re
from collections import defaultdict

import pytest

from toolkit.course import load

COURSE = load()
STEPS = {number: step.path for number, step in COURSE.steps.items()}
SOURCES = [(number, source) for number, step in COURSE.steps.items() for source in step.sources]


def files(step: str) -> set[str]:
    """The step's own files, as paths inside its folder (what make and a run add left out, and
    the README's pictures, which the tests take of the step's pages)."""
    folder = STEPS[step]
    paths = (path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    return {
        str(path)
        for path in paths
        if not {"vendor", "__pycache__", "instance", ".pytest_cache", "pictures"} & set(path.parts)
    }


def same(step: str, source: str, path: str) -> bool:
    return (STEPS[step] / path).read_bytes() == (STEPS[source] / path).read_bytes()


def test_every_step_folder_is_in_steps_toml_and_every_parent_comes_first():
    assert sorted(STEPS.values()) == sorted(STEPS["01"].parent.glob("[0-9][0-9]_*"))
    for number, step in COURSE.steps.items():
        assert all(source < number for source in step.sources), f"step {number} grows from later"


@pytest.mark.parametrize(("step", "source"), SOURCES)
def test_a_carried_file_is_byte_for_byte_the_one_it_comes_from(step, source):
    listed = COURSE.steps[step].sources[source]
    changed = [path for path in listed if path not in files(step) or not same(step, source, path)]
    assert not changed, f"step {step} changes what it says it carries from step {source}"
    unlisted = sorted(
        path
        for path in files(step) & files(source)
        if same(step, source, path) and path not in listed
    )
    assert not unlisted, f"step {step} carries these from step {source}: add them to steps.toml"


def test_a_graft_takes_files_its_source_has():
    for number, step in COURSE.steps.items():
        if step.graft:
            missing = set(step.graft.takes) - files(step.graft.source)
            assert not missing, f"step {number} takes from step {step.graft.source}: {missing}"
            assert set(step.graft.carries) <= set(step.graft.takes)


# A top-level function of a page's script, or a handler of one of its socket's events: from its
# first line to the first line after it that closes a block at the margin.
JS_DEFINITION = re.compile(r'^(?:async )?function (\w+)|^socket\.on\("([^"]+)"', re.MULTILINE)


def js_definitions(text: str, file: str) -> dict[str, str]:
    found = {}
    for match in JS_DEFINITION.finditer(text):
        end = text.index("\n}", match.start()) + len("\n}")
        end = text.index("\n", end) if "\n" in text[end:] else len(text)
        name = match[1] or f"on {match[2]}"
        found[f"{file}:{name}"] = text[match.start() : end]
    return found


def definitions(step: str) -> dict[str, list[str]]:
    """Name -> the source (decorators included) of each top-level function and class of the
    step's Python files, and of each function and socket handler of its scripts (as
    `chat.js:render`, `chat.js:on connect`), except in the files it carries whole."""
    carried = {path for paths in COURSE.steps[step].sources.values() for path in paths}
    found = defaultdict(list)
    for path in sorted(files(step) - carried):
        text = (STEPS[step] / path).read_text() if path.endswith((".py", ".js")) else ""
        if path.endswith(".py"):
            lines = text.splitlines()
            for node in ast.parse(text).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    found[node.name].append("\n".join(lines[start - 1 : node.end_lineno]))
        elif path.endswith(".js"):
            for name, source in js_definitions(text, path.rsplit("/", 1)[-1]).items():
                found[name].append(source)
    return found


DEFINITIONS = {step: definitions(step) for step in STEPS}


@pytest.mark.parametrize("name", COURSE.helpers)
def test_a_carried_helper_has_one_spelling_in_each_group_of_steps(name):
    defined_in = {step for step in STEPS if name in DEFINITIONS[step]}
    groups = [group.split() for group in COURSE.helpers[name]]
    assert defined_in == {step for group in groups for step in group}
    spellings = []
    for group in groups:
        sources = {source for step in group for source in DEFINITIONS[step][name]}
        assert len(sources) == 1, f"{name} is spelled {len(sources)} ways in steps {group}"
        spellings += sources
    assert len(set(spellings)) == len(groups), f"two groups of {name} are spelled alike: join them"


def test_every_helper_spelled_alike_in_two_steps_is_listed():
    spelled_by = defaultdict(set)
    for step, found in DEFINITIONS.items():
        for name, sources in found.items():
            for source in sources:
                spelled_by[name, source].add(step)
    shared = {name for (name, _), steps in spelled_by.items() if len(steps) > 1}
    unlisted = sorted(shared - set(COURSE.helpers))
    assert not unlisted, f"add these to [helpers] in steps.toml: {unlisted}"
