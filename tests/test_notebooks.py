"""notebooks/: both execute on the synthetic cohort, importing only from cellfeat."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # executes the notebooks end to end (about 60 s)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run(name, params, cwd):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_notebooks_are_stripped_and_import_only_cellfeat():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                assert not c["outputs"] and c["execution_count"] is None, path.name
                for mod in re.findall(r"^\s*(?:from|import) (\w+)", "".join(c["source"]), re.M):
                    assert mod in {"cellfeat", "numpy", "pandas", "matplotlib", "json",
                                   "pathlib"}, (path.name, mod)


def test_explore_cohort(synthetic_root, tmp_path):
    nb = run("01-explore-cohort.ipynb", {"DATA": str(synthetic_root), "CELLS_PER_PATIENT": 4,
                                         "SEED": 0}, tmp_path)
    assert any(o.get("output_type") == "display_data" for c in nb.cells
               for o in c.get("outputs", []))


def test_model_results(synthetic_root, tmp_path):
    from pipelines.run.cli import main

    rep = tmp_path / "report"
    assert main(["--quiet", "train", str(synthetic_root), "--features", str(tmp_path / "f"),
                 "--model", str(tmp_path / "m.skops"), "--report", str(rep), "--folds", "3",
                 "--repeats", "1", "--candidates", "clinical-logreg", "bags-logreg",
                 "--jobs", "1"]) == 0
    run("02-model-results.ipynb", {"REPORT": str(rep)}, tmp_path)
