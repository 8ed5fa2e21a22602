"""A sweep as a Ray job (`ray job submit`) on a running cluster: a real local head with its job server, the checkout
as the job's working dir, a job followed to its end, a job stopped with `ray job stop` and resumed by a third, the
results read from outside the jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import BEST_BETA, REPO, generation_indices
from raycluster import RAY, RayCluster, free_port, ray_env

TINY = ("--lr", "0.05", "--snapshot-every", "10", "--checkpoint-every", "1", "--eval-samples", "5", "--concurrency", "1")


@pytest.fixture()
def job_head():
    """A head with its dashboard (the job server) on a free port of 127.0.0.1; (cluster, the job server's URL)."""
    pytest.importorskip("aiohttp_cors", reason="the job server needs ray[default] (pip install \".[cluster]\")")
    port = free_port()
    # a job runs `python` of the head's PATH: this test's first (its Ray started the head)
    with RayCluster(env=ray_env(PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")) as cluster:
        cluster.start_head("--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                           f"--dashboard-port={port}")
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:  # the dashboard's modules start after the node
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline, cluster.nodes[0].log.read_text()[-3000:]
                time.sleep(0.5)
        yield cluster, url


def job(cluster: RayCluster, url: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray job ARGS --address URL`, as a user types it, from the checkout (its --working-dir .)."""
    command, rest = args[0], args[1:]
    return subprocess.run([*RAY, "job", command, "--address", url, *rest], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=cluster.env)


@pytest.mark.slow
def test_a_sweep_runs_as_a_ray_job_is_stopped_and_resumed(tmp_path, tiny_gpt_neo, job_head):
    cluster, url = job_head
    sweep = ["python", "tune_jobs/sweep.py", "--model", str(tiny_gpt_neo), *TINY, "--storage", str(tmp_path)]

    res = job(cluster, url, "submit", "--working-dir", ".", "--", *sweep, "--betas", "0,10", "--max-generations", "20",
              "--name", "a")
    assert res.returncode == 0 and "succeeded" in res.stdout + res.stderr, res.stderr[-3000:]
    assert "alliter sweep a: betas [0.0, 10.0]" in res.stdout, res.stdout[-3000:]  # its logs followed to the end
    for trial in (tmp_path / "a").glob("beta=*"):
        assert generation_indices(trial) == list(range(20))

    # a second job, stopped once a trial has a checkpoint; the driver gets SIGTERM, as from Ctrl-C Tune saves
    res = job(cluster, url, "submit", "--no-wait", "--submission-id", "b1", "--working-dir", ".", "--", *sweep,
              "--betas", "0,10", "--max-generations", "400", "--name", "b")
    assert res.returncode == 0, res.stderr[-3000:]
    deadline = time.time() + 300
    while not list((tmp_path / "b").glob("beta=*/checkpoint_*")):
        assert time.time() < deadline, job(cluster, url, "logs", "b1").stdout[-3000:]
        time.sleep(0.2)
    res = job(cluster, url, "stop", "b1")
    assert res.returncode == 0 and "was stopped" in res.stdout + res.stderr, res.stderr[-3000:]
    logs = job(cluster, url, "logs", "b1").stdout
    assert "continue it with:" in logs and "alliter sweep --resume --name b" in " ".join(logs.split()), logs[-3000:]
    stats = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert stats["status"] == "interrupted", stats

    res = job(cluster, url, "submit", "--submission-id", "b2", "--working-dir", ".", "--", "python",
              "tune_jobs/sweep.py", "--resume", "--name", "b", "--storage", str(tmp_path))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    trials = sorted((tmp_path / "b").glob("beta=*"))
    assert len(trials) == 2
    for trial in trials:  # nothing lost, every generation once
        assert generation_indices(trial) == list(range(400)), trial
    assert "Job 'b2' succeeded" in job(cluster, url, "status", "b2").stdout

    res = subprocess.run([*BEST_BETA, str(tmp_path / "b"), "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(r["beta"] for r in json.loads(res.stdout)["betas"]) == [0.0, 10.0]
    assert Path(tmp_path / "b" / "analysis" / "report.md").exists()
