"""Every notebook runs top to bottom (headless) with the installed package and shows its figures.

Deterministic: the notebooks simulate with fixed seeds; nothing here judges a random outcome.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extra")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the test extra")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
# The notebooks the project ships. A notebook added to notebooks/ must be added here (and so
# gets executed below); one that disappears fails its run instead of silently dropping out.
EXPECTED = ("01_what_if.ipynb", "02_tuning.ipynb", "03_validation.ipynb", "04_rollout.ipynb")


def test_expected_notebooks_are_the_ones_shipped():
    shipped = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert shipped == sorted(EXPECTED), "add new notebooks to EXPECTED so the tests run them"


def test_readme_links_only_notebooks_that_are_tested():
    linked = set(re.findall(r"notebooks/([\w.-]+\.ipynb)", (ROOT / "README.md").read_text()))
    assert linked, "README.md links no notebook"
    assert linked <= set(EXPECTED), sorted(linked - set(EXPECTED))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_and_shows_figures(name, monkeypatch):
    path = NOTEBOOK_DIR / name
    monkeypatch.setenv("GPUSIM_ROOT", str(ROOT))
    # The kernel inherits this environment. Without MPLBACKEND, ipykernel selects matplotlib's
    # inline backend, which is headless and puts each figure into the cell's outputs as PNG; a
    # MPLBACKEND=Agg from the caller (CI images often set it) would draw figures nowhere.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    # timeout: a per-cell wall-clock limit, generous (notebook 01 runs in ~12 s in all, 02's
    # 30-trial study in ~30 s, 04 in 30-55 s, its longest cell a 30-trial study of 10-15 s, on
    # 2 cores), so it fails by chance only on a machine ten or more times slower than a laptop
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs
              if o.get("output_type") == "error"]
    assert not errors, errors
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, (f"{name} shows no figure (no image/png output): does it select a "
                     "non-interactive matplotlib backend such as Agg?")
