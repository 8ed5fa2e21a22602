"""The cluster path on one machine: Ray nodes as processes of this machine, Ray's fake autoscaler.

- a sweep over a head without GPUs and two (stand-in) GPU workers: trials spread over the workers;
- a worker node dies while its trial runs: the trial continues from its checkpoint on the other one;
- Ray's `fake_multinode` autoscaler with cluster.yaml's node types: GPU workers are added for the
  pending trials, from zero, and removed when idle;
- a trial that fits on no node, without an autoscaler: one line, exit 2;
- a user's reward file reaches the worker node that runs the trial (Ray's runtime environment).
The fake nodes' GPUs are logical (torch sees none, the trainer runs on the CPU): what is proven is
Ray's scheduling, autoscaling and fault handling of the sweep, not CUDA.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from raycluster import (
    CLUSTER_YAML,
    FAKE_HEAD_TYPE,
    RayCluster,
    cluster_exports,
    fake_autoscaling_config,
    ray_env,
    resource_flags,
)
from helpers import (
    FAULT_ENV, FAULTY_SWEEP, generation_indices, result_rows, sweep, sweep_main, trial_dir, trial_states, unfolded,
)

yaml = pytest.importorskip("yaml")

# the GCS declares a node dead after this many failed health checks, one a second (default: 5 x 3 s)
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


# --- cluster.yaml -> the fake autoscaler's config (no Ray started) -------------------------------------


def test_fake_autoscaler_config_is_cluster_yamls_node_types():
    from ray.autoscaler._private.util import validate_config

    config = cluster_yaml()
    fake = fake_autoscaling_config(config, "127.0.0.1:1234", idle_timeout_minutes=0.1)
    validate_config(fake)  # Ray's own schema for autoscaling configs
    types = fake["available_node_types"]
    assert set(types) == {FAKE_HEAD_TYPE, "gpu_worker"}
    assert types[FAKE_HEAD_TYPE]["resources"] == config["available_node_types"]["head"]["resources"]
    worker = config["available_node_types"]["gpu_worker"]
    assert types["gpu_worker"] == {"resources": worker["resources"], "node_config": {}, "min_workers": 0,
                                   "max_workers": worker["max_workers"]}
    assert fake["max_workers"] == config["max_workers"] and fake["idle_timeout_minutes"] == 0.1
    assert fake["provider"]["type"] == "fake_multinode" and fake["provider"]["gcs_address"] == "127.0.0.1:1234"
    assert cluster_exports(config)["ALLITER_GPUS_PER_TRIAL"] == "1"


def test_a_change_to_cluster_yamls_node_types_changes_the_fake_cluster():
    changed = copy.deepcopy(cluster_yaml())
    types = changed["available_node_types"]
    types["head"]["resources"] = {"CPU": 8}
    types["gpu_worker"].update(resources={"CPU": 16, "GPU": 4}, min_workers=1, max_workers=2)
    types["cpu_worker"] = {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 3}
    fake = fake_autoscaling_config(changed, "127.0.0.1:1234", idle_timeout_minutes=0.1)["available_node_types"]
    assert fake["gpu_worker"] == {"resources": {"CPU": 16, "GPU": 4}, "node_config": {}, "min_workers": 1, "max_workers": 2}
    assert fake["cpu_worker"]["resources"] == {"CPU": 2} and fake["cpu_worker"]["max_workers"] == 3
    assert resource_flags(types["head"]["resources"]) == ["--num-cpus=8", "--num-gpus=0"]


# --- a fixed cluster: a head without GPUs, two workers with one (stand-in) GPU each -------------------


@pytest.fixture(scope="module")
def gpu_workers_cluster():
    """The shape of cluster.yaml's cluster at work: the head runs the driver, trials need a GPU worker.
    The tests below share it; the node-loss test, which kills a worker, comes last."""
    with RayCluster() as cluster:
        cluster.env.update(FAST_NODE_DEATH)
        cluster.start_head("--num-cpus=1", "--num-gpus=0")
        cluster.add_workers(2, "--num-cpus=1", "--num-gpus=1")
        yield cluster


VOWELS = "def vowels(texts):\n    return [float(sum(c in 'aeiou' for c in t)) for t in texts]\n"


@pytest.fixture(scope="module")
def spread_sweep(gpu_workers_cluster, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Two trials of one (stand-in) GPU each on the cluster's two GPU workers, scored by a reward file given by its
    path on the driver's machine: (the sweep, the reward file, the driver's process)."""
    tmp_path = tmp_path_factory.mktemp("spread")
    path = tmp_path / "user" / "vowel_reward.py"
    path.parent.mkdir()
    path.write_text(VOWELS)
    res = sweep("--betas", "0,10", "--max-generations", "20", "--gpus-per-trial", "1", "--reward", f"{path}:vowels",
                "--address", gpu_workers_cluster.address, "--storage", str(tmp_path), "--name", "nodes",
                env=gpu_workers_cluster.env)
    return tmp_path / "nodes", path, res


@pytest.mark.slow
def test_sweep_spreads_over_two_ray_nodes(gpu_workers_cluster, spread_sweep):
    exp, _, res = spread_sweep
    assert res.returncode == 0, res.stderr[-3000:]
    assert {s["status"] for s in trial_states(exp).values()} == {"TERMINATED"}
    nodes = set()
    for beta in ("0", "10"):
        trial = trial_dir(exp, beta)  # read through the storage path the driver sees
        assert generation_indices(trial) == list(range(20))
        assert list(trial.glob("events.out.tfevents.*"))
        nodes.add(json.loads((trial / "node.json").read_text())["node_id"])
    # one GPU per worker and one per trial: the two trials ran on the two workers
    assert nodes == {node.node_id() for node in gpu_workers_cluster.nodes[1:]}


@pytest.mark.slow
def test_a_trial_that_fits_on_no_node_without_an_autoscaler_is_one_line(gpu_workers_cluster, tmp_path, monkeypatch):
    for key in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(key, gpu_workers_cluster.env[key])
    # in this process (the sweep module is imported already): this driver only joins the cluster and leaves
    res = sweep_main("--betas", "0", "--gpus-per-trial", "2", "--address", gpu_workers_cluster.address,
                     "--storage", str(tmp_path), "--name", "nofit")
    assert res.returncode == 2
    assert res.stderr.count("error:") == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "has 2 GPU and 1 CPU for a trial" in res.stderr and "no autoscaler can add one" in res.stderr
    assert not list(tmp_path.iterdir())  # no sweep folder: nothing was started


@pytest.mark.slow
def test_a_reward_file_travels_to_the_worker_node_that_runs_the_trial(gpu_workers_cluster, spread_sweep):
    """The user's reward file, given by its path on the driver's machine, is shipped by Ray (the job's runtime
    environment) to the GPU worker that runs the trial, which imports that copy and checks its SHA-256."""
    import hashlib

    exp, path, res = spread_sweep
    assert res.returncode == 0, res.stderr[-3000:]
    for beta in ("0", "10"):
        trial = trial_dir(exp, beta)
        assert json.loads((trial / "node.json").read_text())["node_id"] in {n.node_id() for n in gpu_workers_cluster.nodes[1:]}
        info = json.loads((trial / "reward.json").read_text())
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and info["source"] == str(path)
        assert "runtime_resources" in info["loaded_from"] and info["loaded_from"] != str(path)  # the worker's copy
        records = [json.loads(line) for line in (trial / "generations.jsonl").read_text().splitlines()]
        assert [r["raw_reward"] for r in records] == [float(sum(c in "aeiou" for c in r["text"])) for r in records]


@pytest.mark.slow
def test_a_trial_continues_on_another_node_when_its_node_dies(gpu_workers_cluster, tmp_path):
    cluster = gpu_workers_cluster
    workers = {node.node_id(): node for node in cluster.nodes[1:]}
    args = ["--betas", "5", "--max-generations", "80", "--checkpoint-every", "2", "--gpus-per-trial", "1",
            "--address", cluster.address, "--storage", str(tmp_path), "--name", "loss"]
    log = tmp_path / "driver.log"  # a file, not a pipe nobody reads while the trial runs
    # the trial's first process stops after its second checkpoint (group 4, 40 generations) until its node
    # dies: without that, it could finish its last groups before the kill (it did once in CI)
    with log.open("w") as out:
        driver = subprocess.Popen([*FAULTY_SWEEP, *args, "--report-seconds", "0"], stdout=out, stderr=subprocess.STDOUT,
                                  env={**cluster.env, FAULT_ENV: "hang:4"}, start_new_session=True)
    exp = tmp_path / "loss"
    try:
        # wait for that checkpoint (node.json is synced with it) and for the driver to have its report
        deadline = time.time() + 180
        while time.time() < deadline and driver.poll() is None:
            trials = list(exp.glob("beta=5_*"))
            if (trials and len(list(trials[0].glob("checkpoint_*/checkpoint.pt"))) >= 2
                    and (trials[0] / "node.json").exists() and any(r["generations"] >= 40 for r in result_rows(trials[0]))):
                break
            time.sleep(0.1)
        first_node = json.loads((trial_dir(exp, "5") / "node.json").read_text())["node_id"]
        assert first_node in workers
        os.kill(workers[first_node].raylet_pid(), signal.SIGKILL)  # the node is gone: its raylet and the trial
        driver.wait(timeout=240)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, log.read_text()[-3000:]
    state = trial_states(exp)[5.0]
    assert state["status"] == "TERMINATED" and state["num_failures"] >= 1 and state["generations"] == 80
    trial = trial_dir(exp, "5")
    assert generation_indices(trial) == list(range(80))  # every generation exactly once
    second_node = json.loads((trial / "node.json").read_text())["node_id"]
    assert second_node in workers and second_node != first_node
    # Tune's rows, by worker process: the first process stopped at its checkpoint at 40 generations (the
    # driver had that report before the kill), and the second one went on from there, not from the start
    rows = result_rows(trial)
    pids = list(dict.fromkeys(r["pid"] for r in rows))
    assert len(pids) == 2
    first_run = [r["generations"] for r in rows if r["pid"] == pids[0]]
    resumed_from = min(r["generations"] for r in rows if r["pid"] == pids[1]) - 10
    assert max(first_run) == 40 and resumed_from == 40
    print(f"trial ran on node {first_node[:12]} to {max(first_run)} generations; its node died; it continued on "
          f"node {second_node[:12]} from its checkpoint at {resumed_from}")


# --- Ray's fake autoscaler with cluster.yaml's node types --------------------------------------------


class NodeWatcher(threading.Thread):
    """Records, twice a second, when (unix time) each node of a cluster is first seen alive and first seen dead."""

    def __init__(self, cluster: RayCluster):
        super().__init__(daemon=True)
        self.cluster, self.t0, self.stopped = cluster, time.time(), threading.Event()
        self.added: dict[str, tuple[str, float]] = {}  # node id -> (node type, time)
        self.removed: dict[str, float] = {}

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                infos = self.cluster.node_infos()
            except Exception:  # a slow GCS answer: look again
                infos = {}
            now = time.time()
            for node_id, info in infos.items():
                if info.state == 0 and node_id not in self.added:
                    self.added[node_id] = (info.node_type_name, now)
                elif info.state != 0 and node_id in self.added and node_id not in self.removed:
                    self.removed[node_id] = now
            self.stopped.wait(0.5)

    def workers(self, node_type: str) -> dict[str, float]:
        return {node: at for node, (kind, at) in self.added.items() if kind == node_type}


@pytest.mark.slow
def test_autoscaler_adds_gpu_workers_for_pending_trials_and_removes_them_when_idle(tmp_path):
    config = cluster_yaml()
    head_type = config["available_node_types"][config["head_node_type"]]
    idle_minutes = 0.05
    # the autoscaler's round every 2 s instead of 5: nodes come and go sooner
    with RayCluster(env=ray_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="2")) as cluster:
        autoscaling = tmp_path / "autoscaling.yaml"
        autoscaling.write_text(yaml.safe_dump(fake_autoscaling_config(config, cluster.address, idle_minutes)))
        # the sweep starts the moment the GCS answers, as one run right after `ray up` would: the autoscaler's
        # first status then names no node type yet, and the sweep must wait for one, not refuse its trials
        cluster.start_head(*resource_flags(head_type["resources"]), f"--autoscaling-config={autoscaling}", wait="gcs")
        watcher = NodeWatcher(cluster)
        watcher.start()
        # the environment cluster.yaml gives every node, with a local folder for its bucket; `--address auto`
        # finds this cluster through RAY_ADDRESS (on a real head node, through the address file that
        # `ray start --head` writes, which on this shared machine other tests' Rays may overwrite)
        env = {**cluster.env, **cluster_exports(config), "ALLITER_STORAGE": str(tmp_path / "results"),
               "RAY_ADDRESS": cluster.address}
        res = sweep("--betas", "0,10", "--max-generations", "20", "--address", "auto", "--name", "auto", env=env)
        deadline = time.time() + 120
        while time.time() < deadline and (set(watcher.workers("gpu_worker")) - set(watcher.removed)):
            time.sleep(0.5)
        watcher.stopped.set()
        watcher.join()
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("the trials wait for the autoscaler") == 1  # said once
    assert [line for line in unfolded(res.stdout) if line.startswith("autoscaler:")] == [
        "autoscaler: the one that publishes Ray's autoscaling status (its nodes' types: ray.head.default); it may "
        "add nodes of the types in its config (not published with the status)"]
    added = watcher.workers("gpu_worker")
    assert len(added) == 2, watcher.added  # one GPU worker per pending trial, from zero
    exp = tmp_path / "results" / "auto"
    assert {s["status"] for s in trial_states(exp).values()} == {"TERMINATED"}
    trial_end = {}  # GPU worker -> when the last trial on it reported its last group
    for beta in ("0", "10"):
        trial = trial_dir(exp, beta)
        assert generation_indices(trial) == list(range(20))
        node = json.loads((trial / "node.json").read_text())["node_id"]
        assert node in added  # on a GPU worker, not on the head
        last = result_rows(trial)[-1]["timestamp"]
        trial_end[node] = max(trial_end.get(node, 0), last)
    assert set(added) <= set(watcher.removed), "idle GPU workers were not removed"
    for node, end in trial_end.items():
        assert watcher.removed[node] >= end  # removed once idle, not while its trial ran
    t = lambda at: round(at - watcher.t0)  # noqa: E731
    print(f"GPU workers added at {sorted(t(a) for a in added.values())} s after the head started, their trials "
          f"ended at {sorted(t(e) for e in trial_end.values())} s, the workers were removed at "
          f"{sorted(t(watcher.removed[n]) for n in added)} s (idle timeout {idle_minutes * 60:g} s)")
