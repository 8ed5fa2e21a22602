"""The package as a user installs it: the built wheel in a new virtualenv outside the checkout, every command run
from an empty folder, the installed files (not the checkout's) running."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

TINY = ("--lr", "0.05", "--snapshot-every", "10", "--eval-samples", "5", "--concurrency", "1")


def installed_venv(tmp_path: Path) -> Path:
    """The wheel of the checkout (`pip wheel`, as CI builds it) in a new virtualenv: the system's packages are seen
    (--system-site-packages), and so are this interpreter's (a .pth of its site folders, after the venv's own: a
    venv of CI's has torch there), but not its alliter, whose editable hook only its own .pth file would install."""
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("alliter-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    ours = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    # after the install: pip would take the editable alliter it sees there for the wheel's, installed already
    Path(ours, "zz_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def run_in(folder: Path, venv: Path, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command of the venv's, run in `folder` with the venv first on PATH and nothing of the checkout's around."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "RAY_ADDRESS")}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), RAY_USAGE_STATS_ENABLED="0")
    res = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{command}: {res.stderr[-3000:]}"
    assert str(REPO) not in res.stdout + res.stderr, (command, res.stderr[-3000:])  # no file of the checkout ran
    return res


@pytest.mark.slow
def test_the_wheel_runs_every_command_from_an_empty_folder(tmp_path, tiny_gpt_neo):
    venv = installed_venv(tmp_path)
    here = tmp_path / "empty"
    here.mkdir()
    where = run_in(here, venv, "python", "-c", "import alliter, alliter.config as c; print(alliter.__file__); "
                   "print(c.BUNDLED_MODEL.is_dir())").stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "True", where  # the bundled model is in the wheel

    bad = subprocess.run([str(venv / "bin" / "alliter"), "sweep", "--betass", "1"], cwd=here, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr == "error: unrecognized arguments: --betass 1 (see alliter sweep --help)\n"
    bad = subprocess.run([str(venv / "bin" / "alliter"), "best-beta"], cwd=here, capture_output=True, text=True,
                         timeout=300)  # nothing under ./results yet
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("error: "), bad.stderr

    model = str(tiny_gpt_neo)
    run_in(here, venv, "alliter", "sweep", "--betas", "0,10", "--max-generations", "20", "--model", model, *TINY,
           "--name", "w")
    assert sorted(p.name.split("_")[0] for p in (here / "results" / "w").glob("beta=*")) == ["beta=0", "beta=10"]
    run_in(here, venv, "alliter", "best-beta")  # the newest sweep under ./results
    assert (here / "results" / "w" / "analysis" / "report.md").exists()
    res = run_in(here, venv, "python", "-m", "alliter", "best-beta", "results/w", "--json", "--export", "model",
                 "--force")
    assert json.loads(res.stdout)["export"]["dir"] == "model"
    stories = run_in(here, venv, "alliter", "sample", "model", "--n", "2").stdout
    assert stories.count("Once upon a time") >= 2, stories
    run_in(here, venv, "alliter", "train", "--out", "run", "--max-generations", "20", "--snapshot-every", "10",
           "--eval-samples", "5")  # the bundled model, from the wheel's files
    assert (here / "run" / "generations.jsonl").read_text().count("\n") == 20

    run_in(here, venv, "alliter", "study", "--model", model, "--grid-generations", "20", "--extended-generations", "20",
           "--seeds", "1", *TINY, "--name", "s", timeout=1200)
    state = json.loads((here / "results" / "s" / "study.json").read_text())
    assert {s["status"] for s in state["steps"].values()} == {"finished"}
    assert (here / "results" / "s" / "study.html").exists()
    assert sorted(p.name for p in here.iterdir()) == ["model", "results", "run"]  # nothing else left in the folder
