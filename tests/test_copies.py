"""Copies stay true: what a step carries from the step it grows from is that step's, byte for byte.

Each step grows from its parent (`parent_NN` in the Makefile; step 08 also takes its jobs from
step 06, `grafts_08`). CARRIED lists, per step, the files it carries unchanged: one byte of
difference fails, and so does a file that is identical to the other step's but not listed, so
the lists are exactly the truth. HELPERS does the same for the functions and classes carried in
files that do change: each group of steps shares one spelling, word for word. No browser, no
server: this runs in a second.
"""

import ast
import re
from collections import defaultdict

import pytest
from harness import ROOT

STEPS = {path.name[:2]: path for path in (ROOT / "steps").iterdir() if path.is_dir()}
MAKEFILE = (ROOT / "Makefile").read_text()

# step -> {the step it takes files from: the files it carries unchanged from it}
CARRIED = {
    "02": {"01": []},
    "03": {"02": []},
    "04": {"03": ["static/style.css"]},
    "05": {"04": []},
    "06": {"02": []},
    "07": {"04": []},
    "08": {
        "07": [
            ".gitignore",
            "common_passwords.txt",
            "connections.py",
            "db.py",
            "forms.py",
            "messages.py",
            "rate_limit.py",
            "rooms.py",
            "schema.sql",
            "static/style.css",
            "templates/_field.html",
            "templates/account.html",
            "templates/members.html",
        ],
        "06": ["templates/_error.html", "templates/_progress.html", "templates/_step.html"],
    },
}

# The functions and classes that more than one step defines identically (in files not carried
# whole), with every step that defines each: a group of steps shares one spelling; a step alone
# in its group has a version of its own.
HELPERS = {
    "SendLimit": ["03 04 05 07"],  # step 08 carries step 07's rate_limit.py whole
    "read_message": ["03", "04 05", "07"],  # a frame of JSON; a name and data; a room and text
    "on_connect": ["04 05", "07", "08"],
    "on_disconnect": ["04 05", "07", "08"],
    "on_send_message": ["04", "05", "07 08"],
    "count_online": ["04 05"],
    "clock_time": ["04 05"],
    "now": ["02 06"],
    "sse_event": ["06 08"],
    "plain_text": ["06 08"],
    "session_key": ["07 08"],
    "Visitor": ["07 08"],
    "visitor_required": ["07 08"],
    # Step 08 notes who joined (its presence tells a page that joined alone when the names did
    # not change: 10,000 pages join in a storm); step 07 notes the room.
    "on_join": ["07", "08"],
    # Step 08's presence task asks Redis, in the app's context: it is given the app.
    "start_tasks": ["07", "08"],
    "add_security_headers": ["07 08"],
    # accounts.py: step 08 hashes passwords in gevent's thread pool, the rest is step 07's
    "User": ["07 08"],
    "token_hash": ["07 08"],
    "load_user": ["07 08"],
    "attempts": ["07 08"],
    "no_one_hash": ["07 08"],
    "refused": ["07 08"],
    "username_tried": ["07 08"],
    "sign_in": ["07 08"],
    "too_many_attempts": ["07 08"],
    "account_page": ["07 08"],
    "logout": ["07 08"],
    "sent_as_an_event": ["04 05", "07 08"],
    "drop_clients_behind": ["04", "05", "07"],  # step 08 carries step 07's connections.py whole
}


def files(step: str) -> set[str]:
    """The step's own files, as paths inside its folder (what make and a run add left out)."""
    folder = STEPS[step]
    paths = (path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    return {
        str(path)
        for path in paths
        if not {"vendor", "__pycache__", "instance", ".pytest_cache"} & set(path.parts)
    }


def same(step: str, source: str, path: str) -> bool:
    return (STEPS[step] / path).read_bytes() == (STEPS[source] / path).read_bytes()


def test_each_step_takes_files_from_its_parent_as_the_makefile_says():
    parents = dict(re.findall(r"^parent_(\d\d) := (\d\d)$", MAKEFILE, re.MULTILINE))
    grafts = dict(re.findall(r"^grafts_(\d\d) := (\d\d) ", MAKEFILE, re.MULTILINE))
    assert set(parents) == set(STEPS) - {"01"}
    for step, sources in CARRIED.items():
        assert set(sources) == {parents[step]} | ({grafts[step]} if step in grafts else set())


@pytest.mark.parametrize(
    ("step", "source"), [(step, source) for step in CARRIED for source in CARRIED[step]]
)
def test_a_carried_file_is_byte_for_byte_the_one_it_comes_from(step, source):
    listed = CARRIED[step][source]
    changed = [path for path in listed if path not in files(step) or not same(step, source, path)]
    assert not changed, f"step {step} changes what it says it carries from step {source}"
    unlisted = sorted(
        path
        for path in files(step) & files(source)
        if same(step, source, path) and path not in listed
    )
    assert not unlisted, f"step {step} carries these from step {source}: add them to CARRIED"


def definitions(step: str) -> dict[str, list[str]]:
    """Name -> the source (decorators included) of each top-level function and class of the
    step's Python files, except those it carries whole."""
    carried = {path for paths in CARRIED.get(step, {}).values() for path in paths}
    found = defaultdict(list)
    for path in sorted(files(step) - carried):
        if path.endswith(".py"):
            lines = (STEPS[step] / path).read_text().splitlines()
            for node in ast.parse("\n".join(lines)).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    found[node.name].append("\n".join(lines[start - 1 : node.end_lineno]))
    return found


DEFINITIONS = {step: definitions(step) for step in STEPS}


@pytest.mark.parametrize("name", HELPERS)
def test_a_carried_helper_has_one_spelling_in_each_group_of_steps(name):
    defined_in = {step for step in STEPS if name in DEFINITIONS[step]}
    groups = [group.split() for group in HELPERS[name]]
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
    shared = sorted({name for (name, _), steps in spelled_by.items() if len(steps) > 1})
    assert not set(shared) - set(HELPERS), "add these to HELPERS"
