"""The READMEs' pictures, without a browser: every picture a step's README shows exists, under
"What you should see", with alt text that says what it shows; every picture in a step's pictures/
folder is shown; none is large in bytes, nor wider than a README's column can show without
shrinking it. `make pictures` takes them again (tests/test_pages.py, tests/test_NN_pages.py)."""

import re

import pytest
from PIL import Image

from toolkit.launcher import ROOT

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")  # ![alt text](path)
SECTION = re.compile(r"^## What you should see\n(.*?)(?=^## |\Z)", re.M | re.S)
LARGEST = {".png": 100_000, ".gif": 300_000}  # bytes
WIDEST = 1_000  # pixels
STEPS = sorted(readme.parent for readme in ROOT.glob("steps/*/README.md"))


def shown(step):
    """(alt text, path) of each picture the step's README shows, and the part that shows them."""
    readme = (step / "README.md").read_text()
    section = SECTION.search(readme)
    assert section, "no section 'What you should see'"
    pictures = [(alt, (step / path).resolve()) for alt, path in IMAGE.findall(readme)]
    in_section = [(alt, (step / path).resolve()) for alt, path in IMAGE.findall(section[1])]
    return pictures, in_section


@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.name)
def test_each_picture_a_readme_shows_is_there_under_what_you_should_see_with_alt_text(step):
    pictures, in_section = shown(step)
    assert pictures == in_section, "a picture outside 'What you should see'"
    for alt, path in pictures:
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing (make pictures)"
        assert len(alt.split()) >= 8, f"the alt text of {path.name} says too little: {alt!r}"
    wanted = 3 if step.name >= "06" else 1
    assert len(pictures) >= wanted, f"{step.name} shows {len(pictures)} pictures, not {wanted}"


@pytest.mark.parametrize("step", STEPS, ids=lambda step: step.name)
def test_each_picture_in_a_pictures_folder_is_shown_and_small(step):
    pictures, _ = shown(step)
    for path in sorted((step / "pictures").glob("*")):
        assert path in [shown_path for _, shown_path in pictures], f"{path.name} is not shown"
        assert path.stat().st_size < LARGEST[path.suffix], f"{path.name} is too large"
        with Image.open(path) as picture:
            assert picture.width <= WIDEST, f"{path.name} is {picture.width} pixels wide"
