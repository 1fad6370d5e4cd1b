"""Every notebook runs top to bottom, as a learner would run it; some of them twice in a row in one
kernel, which a second run finds holding the first run's servers, modules and variables."""

import sys
from pathlib import Path

import pytest

from toolkit.launcher import ROOT

# Run once: the slowest, whose second run would check little that the others do not. The
# notebooks of steps 01 to 03 (which serve in the kernel through lab.py, as 04, 06 and 07 do) and
# the bench's run twice.
ONCE = {
    "04_socketio_broadcast": "it serves in the kernel, as 01 to 03 do",
    "05_scale_out": "its servers and its Redis are processes of their own, on new ports each run",
    "06_sse_progress": "its second half measures in Chromium for half a minute; its first half "
    "serves in the kernel, as 01 to 03 do",
    "07_rooms_and_logins": "it serves in the kernel, as 01 to 03 do",
}

# A notebook that drives Chromium (through lab.ClockPages) is a browser test: `make test-fast`
# leaves it out.
IN_CHROMIUM = {"06_sse_progress"}
NOTEBOOKS = [
    pytest.param(path, id=path.stem, marks=pytest.mark.e2e if path.stem in IN_CHROMIUM else ())
    for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_in_one_kernel(path: Path):
    # nbformat validates with jsonschema, which imports rfc3987_syntax if it can: that builds a
    # grammar for 2.5 s, for checks of IRIs that no notebook needs. Without it, jsonschema leaves
    # them out. (Imported here, not at the top: the other tests' processes need none of it.)
    sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    with client.setup_kernel():
        for _ in range(1 if path.stem in ONCE else 2):
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
