"""The Python API (alliter.run_sweep, alliter.load) and the example notebook, run through a real Jupyter kernel."""

from __future__ import annotations

import pytest

import alliter
from alliter.api import sweep_argv
from alliter.analyse.judge import BestPoint, Choice
from alliter.cli import AlliterError
from alliter.sweep.command import parse
from alliter.testing import tiny_sweep
from helpers import REPO

NOTEBOOK = REPO / "examples" / "analyse_a_sweep.ipynb"


def test_keywords_are_the_sweeps_flags():
    argv = sweep_argv({"betas": [0, 0.5, 10.0], "max_generations": 20, "kl_loss": True, "seeds": None})
    assert argv == ["--betas", "0,0.5,10", "--max-generations", "20", "--kl-loss", "true"]
    sweep, base, _, given = parse(argv)
    assert sweep.betas == "0,0.5,10" and base.max_generations == 20 and base.kl_loss is True
    with pytest.raises(AlliterError, match="unrecognized arguments: --betass"):
        alliter.run_sweep(betass=[1])  # refused before anything starts


def test_load_gives_typed_choice_frames_stories_and_figures(tmp_path, tiny_gpt_neo):
    tiny_sweep(tmp_path, tiny_gpt_neo)
    result = alliter.load(tmp_path)
    assert isinstance(result.choice, Choice) and result.choice.value == 1.0 and result.choice.knob.name == "beta"
    assert isinstance(result.best_point, BestPoint) and result.best_point.generations == 20
    assert result.choice.as_dict()["value"] == 1.0 and result.best_point.as_dict()["next"] == 40
    assert len(result.trials) == 2 and len(result.summary) == 2 and len(result.points) == 8
    stories = result.stories()
    assert len(stories) == 3 and stories["text"].str.startswith("Once upon a time").all()
    assert len(result.stories(0.0, 60)) == 3
    for name in result.plots:
        figure = result.plot(name)
        assert figure.axes, name
    with pytest.raises(AlliterError, match="no setting 'share'"):
        alliter.load(tmp_path, share=0.5)
    with pytest.raises(AlliterError, match="beta 7 is not in the sweep"):
        result.stories(7.0)
    assert alliter.load(tmp_path, diversity_share=0.99).choice is None  # the rule's settings are best_beta's


@pytest.mark.slow
def test_the_example_notebook_runs_in_a_jupyter_kernel(tmp_path, monkeypatch):
    """The notebook as a user runs it: a real kernel sweeps its tiny model, loads it, prints the choice and draws."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # the kernel inherits this process's environment
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "choice: beta " in text and "best point" in text, text[-3000:]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not (tmp_path / "results").exists()  # the notebook's sweep went under its own folder
