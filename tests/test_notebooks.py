"""Every notebook runs top to bottom, as a learner would run it; some of them twice in a row in one
kernel, which a second run finds holding the first run's servers, modules and variables.

One class per notebook: pytest-xdist (`--dist loadscope`) hands each class to a process of its
own, so the notebooks run side by side."""

import sys

import pytest

from toolkit.course import ROOT


def run_notebook(name: str, times: int) -> None:
    """Execute notebooks/<name>.ipynb `times` times over in one kernel."""
    # nbformat validates with jsonschema, which imports rfc3987_syntax if it can: that builds a
    # grammar for 2.5 s, for checks of IRIs that no notebook needs. Without it, jsonschema leaves
    # them out. (Imported here, not at the top: the other tests' processes need none of it.)
    sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    with client.setup_kernel():
        for _ in range(times):
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)


def test_every_notebook_is_run_by_a_class_here():
    notebooks = {path.stem for path in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks == {run.NOTEBOOK for run in Notebook.__subclasses__()}


@pytest.mark.slow
@pytest.mark.timeout(180)
class Notebook:
    """Run notebooks/NOTEBOOK.ipynb TIMES times over in one kernel: twice where the second run
    checks that a notebook can run again in one kernel (the notebooks that serve in the kernel
    through lab.py, and the quick bench one); once where a second run would add little."""

    NOTEBOOK: str
    TIMES = 1

    def test_runs_top_to_bottom_in_one_kernel(self):
        run_notebook(self.NOTEBOOK, self.TIMES)


class TestNotebook01Echo(Notebook):
    NOTEBOOK, TIMES = "01_echo", 2


class TestNotebook02Clock(Notebook):
    NOTEBOOK, TIMES = "02_clock", 2


class TestNotebook03Chat(Notebook):
    NOTEBOOK, TIMES = "03_chat", 2


class TestNotebook04SocketioBroadcast(Notebook):
    NOTEBOOK = "04_socketio_broadcast"


class TestNotebook05ScaleOut(Notebook):
    NOTEBOOK = "05_scale_out"  # its servers and its Redis are processes, on new ports each run


# It drives Chromium (lab.ClockPages) for half a minute: a browser test, which `make test-fast`
# leaves out.
@pytest.mark.e2e
class TestNotebook06SseProgress(Notebook):
    NOTEBOOK = "06_sse_progress"


class TestNotebook07RoomsAndLogins(Notebook):
    NOTEBOOK = "07_rooms_and_logins"


# Each attack of step 08's table, against steps 07 and 08: in the kernel, with small settings.
class TestNotebook08UnderAttack(Notebook):
    NOTEBOOK = "08_under_attack"


class TestNotebookBench(Notebook):
    NOTEBOOK, TIMES = "bench", 2
