"""Every notebook runs top to bottom, twice in a row in one kernel, as a learner would run it."""

from pathlib import Path

import nbformat
import pytest
from harness import ROOT
from nbclient import NotebookClient

# A notebook that drives Chromium is a browser test: `make test-fast` leaves it out.
NOTEBOOKS = [
    pytest.param(
        path, id=path.stem, marks=pytest.mark.e2e if "playwright" in path.read_text() else ()
    )
    for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_runs_twice_in_one_kernel(path: Path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    with client.setup_kernel():
        for _ in range(2):
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
