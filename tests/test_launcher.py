"""Ray's cluster launcher for real on this machine, and what can be checked of cluster.yaml without AWS.

- cluster.yaml and cluster-onprem.yaml install and start Ray through the same two scripts
  (cluster/setup.sh, cluster/start.sh) with the same lines: they cannot drift apart;
- every path their file_mounts copy exists and every command they run parses (`bash -n`);
- `ray up -y` with cluster-onprem.yaml (Ray's `local` provider) over SSH to 127.0.0.1, a sweep through
  `ray exec` that finds the launcher's autoscaler in ~/ray_bootstrap_config.yaml, Ray's token
  authentication and the tunnel of `ray dashboard`, then `ray down -y`.
The SSH server is the test's own (tests/sshserver.py): a user made for the test, whose Ray processes
are the only ones `ray stop` can reach. A single machine is the head only: the local provider's workers
are other machines (a worker of the same user on the head's machine would stop the head with its
`ray stop`, and Ray would name both nodes by the machine's one address).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raycluster import RAY, ROOT, SETUP_SCRIPT, cluster_exports, free_port
from sshserver import SSHServer, cmdline, missing
from test_sweep import generation_indices, trial_dir, trial_states

yaml = pytest.importorskip("yaml")

CONFIGS = {"cluster.yaml": ROOT / "cluster.yaml", "cluster-onprem.yaml": ROOT / "cluster-onprem.yaml"}
START_SCRIPT = "~/alliter/cluster/start.sh"
HEAD_START = [f"bash {START_SCRIPT} ray start --head --autoscaling-config=~/ray_bootstrap_config.yaml"]
WORKER_START = [f"bash {START_SCRIPT} ray start --address=$RAY_HEAD_IP"]
TOKEN_MOUNT = ("~/.alliter/ray_auth_token", "~/.ray/auth_token")  # your Ray token, to every node
COMMAND_LISTS = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands"]


def load(name: str) -> dict:
    return yaml.safe_load(CONFIGS[name].read_text())


# --- both configs, no Ray started ---------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_config_installs_and_starts_ray_only_through_the_shared_scripts(name):
    config = load(name)
    (setup,) = config["setup_commands"]
    words = shlex.split(setup)
    assert words[:2] == ["bash", SETUP_SCRIPT]
    assert all("=" in w and w.split("=")[0].startswith("ALLITER_") for w in words[2:]), words  # settings only
    assert config["head_start_ray_commands"] == HEAD_START
    assert config["worker_start_ray_commands"] == WORKER_START
    assert not config["initialization_commands"] and not config["head_setup_commands"]
    assert not config["worker_setup_commands"]
    # the scripts travel with the project copy: under the "~/alliter" mount and not left out of it
    assert config["file_mounts"] == {"~/alliter": ".", TOKEN_MOUNT[0]: TOKEN_MOUNT[1]}
    tracked = subprocess.run(["git", "ls-files", "cluster"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert {"cluster/setup.sh", "cluster/start.sh"} <= set(tracked)


def test_both_configs_copy_the_project_alike():
    a, b = load("cluster.yaml"), load("cluster-onprem.yaml")
    for key in ["file_mounts", "rsync_exclude", "rsync_filter", "cluster_synced_files", "file_mounts_sync_continuously",
                *COMMAND_LISTS[2:]]:
        assert a[key] == b[key], key
    # what differs is the settings: the bucket or a shared folder, and the virtual environment on-premises
    aws, onprem = cluster_exports(a), cluster_exports(b)
    assert aws["ALLITER_STORAGE"].startswith("s3://") and aws["ALLITER_GPUS_PER_TRIAL"] == onprem["ALLITER_GPUS_PER_TRIAL"]
    assert onprem["ALLITER_VENV"] == "~/alliter-venv" and "ALLITER_VENV" not in aws  # the DLAMI has its venv


@pytest.mark.parametrize("name", CONFIGS)
def test_every_file_mount_exists_and_every_command_parses(name):
    """What `ray up` would find broken only on the first real run (after paying for a head node)."""
    config = load(name)
    for remote, local in config["file_mounts"].items():
        if (remote, local) == TOKEN_MOUNT:
            continue  # the user's own, made by `ray get-auth-token --generate` (the docs' first step)
        assert (ROOT / local).exists(), local
    for key in COMMAND_LISTS:
        for command in config[key]:
            res = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert res.returncode == 0, f"{key}: {command}: {res.stderr}"
    for script in ("cluster/setup.sh", "cluster/start.sh"):
        res = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "ray get-auth-token --generate" in docs


def test_onprem_config_passes_rays_schema_and_lists_its_machines():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster-onprem.yaml")
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does first: the local provider's one node type
    validate_config(prepared)
    (node_type,) = prepared["available_node_types"].values()
    workers = len(config["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == workers == prepared["max_workers"]
    assert "0.0.0.0" not in CONFIGS["cluster-onprem.yaml"].read_text()


@pytest.mark.parametrize("workers, types, adds", [
    ([], [], "no node"),
    (["10.0.0.2", "10.0.0.3"], None, "up to 2 local.cluster.node (resources as Ray detects them)"),
])
def test_a_local_clusters_bootstrap_config_says_what_it_may_add(tmp_path, monkeypatch, workers, types, adds):
    """An on-premises cluster's machines have the resources Ray detects on them: a trial that needs a GPU
    waits for a listed machine instead of being refused (the node type lists no resources)."""
    from ray.autoscaler._private.util import prepare_config

    from alliter import cluster

    config = load("cluster-onprem.yaml")
    config["provider"].update(head_ip="10.0.0.1", worker_ips=workers)
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(prepare_config(config)))
    monkeypatch.setenv("HOME", str(tmp_path))
    found = cluster.find_autoscaler()
    assert found.node_types == types
    assert found.line() == (f"autoscaler: the cluster launcher's, from {tmp_path / 'ray_bootstrap_config.yaml'} "
                            f"(provider local); it may add {adds}")


# --- the launcher ---------------------------------------------------------------------------------------


def ray_cli(*args: str, env: dict[str, str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    """A `ray` command of this machine's Ray, from the repository root (file_mounts copies ".")."""
    with log.open("a") as out:
        out.write(f"\n$ ray {shlex.join(args)}\n")
        out.flush()
        res = subprocess.run([*RAY, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=timeout)
        out.write(res.stdout)
    return res


def user_processes(server: SSHServer) -> dict[int, str]:
    """pid -> command line of the test user's processes."""
    return {pid: " ".join(cmdline(pid)) for pid in server.user_pids()}


def client_pids(server: SSHServer) -> list[int]:
    """This side's ssh processes for the server (Ray's ControlMaster connections outlive a command by 10 s)."""
    key = str(server.client_key)
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if key in cmdline(pid)]


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=f"the launcher test's SSH server: {missing()}")
def test_ray_up_runs_a_sweep_through_ray_exec_and_ray_down_stops_everything(tmp_path):
    t0 = time.time()
    times = {}
    ports = {name: free_port() for name in ("gcs", "object_manager", "dashboard", "client", "agent")}
    server = SSHServer()
    local = server.root / "local"  # this side's HOME and temp: Ray's state file, config cache, the token
    log = tmp_path / "launcher.log"
    env = {**os.environ, "HOME": str(local), "TMPDIR": str(local / "tmp"), "RAY_TMPDIR": str(local / "tmp"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        (local / "tmp").mkdir(parents=True)
        # the machine as its user finds it: this Python on PATH, Ray's temp folder their own (on a machine
        # shared by users, /tmp/ray is everybody's), no usage stats
        server.start(bashrc=f"export PATH={Path(sys.executable).parent}:$PATH\n"
                            f"export RAY_TMPDIR={server.home / 'tmp'}\nexport RAY_USAGE_STATS_ENABLED=0\n")
        (server.home / "tmp").mkdir()
        os.chown(server.home / "tmp", server.uid, server.uid)
        res = ray_cli("get-auth-token", "--generate", env=env, log=log, timeout=120)
        token = (local / ".ray" / "auth_token").read_text().strip()
        assert res.returncode == 0 and token, res.stdout[-2000:]

        # cluster-onprem.yaml with this machine's head, the test's user and key; the settings line as a
        # site would write it, offline (--no-index: nothing is downloaded) and with free ports
        config = load("cluster-onprem.yaml")  # everything else as it is: file_mounts, start lines, ...
        onprem = copy.deepcopy(config)
        config["cluster_name"] = f"alliter-test-{server.user.split('-')[1]}"
        config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
        config["auth"] = {"ssh_user": server.user, "ssh_private_key": str(server.client_key),
                          "ssh_proxy_command": server.proxy_command()}
        settings = {**cluster_exports(onprem), "ALLITER_STORAGE": "~/results",
                    "ALLITER_PIP_FLAGS": "--no-index --no-deps --no-build-isolation",
                    "ALLITER_RAY_PORT": str(ports["gcs"]), "ALLITER_OBJECT_MANAGER_PORT": str(ports["object_manager"]),
                    "ALLITER_RAY_START_FLAGS": f"--dashboard-port={ports['dashboard']} "
                                               f"--ray-client-server-port={ports['client']} "
                                               f"--dashboard-agent-listen-port={ports['agent']} "
                                               "--min-worker-port=0 --max-worker-port=0"}
        config["setup_commands"] = [f"bash {SETUP_SCRIPT} " + shlex.join(f"{k}={v}" for k, v in settings.items())]
        path = server.root / "cluster.yaml"
        path.write_text(yaml.safe_dump(config))

        res = ray_cli("up", "-y", "--no-config-cache", str(path), env=env, log=log, timeout=420)
        times["ray up"] = time.time() - t0
        assert res.returncode == 0, log.read_text()[-5000:]
        head = user_processes(server)
        for pid, cmd in head.items():
            print(pid, cmd[:400])
        if os.environ.get("LAUNCHER_DEBUG"):
            Path("/tmp/launcher-debug.json").write_text(json.dumps({"config": str(path), "env": env, "ports": ports, "token": token}))
            while Path("/tmp/launcher-debug.json").exists():
                time.sleep(1)
        res = ray_cli("exec", str(path), "cd ~/alliter && python tune_jobs/sweep.py --betas 0,1 --max-generations 20 "
                      "--gpus-per-trial 0 --address auto --name launcher", env=env, log=log, timeout=420)
        times["ray exec"] = time.time() - t0
        print(res.stdout[-6000:])
        assert res.returncode == 0
        res = ray_cli("down", "-y", str(path), env=env, log=log, timeout=300)
        times["ray down"] = time.time() - t0
        print(res.stdout[-3000:])
        print(user_processes(server))
    finally:
        for pid in client_pids(server):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        server.stop()
        print(times)
