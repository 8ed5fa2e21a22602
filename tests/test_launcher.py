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

import contextlib
import copy
import getpass
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import generation_indices, trial_dir, trial_states, unfolded
from raycluster import RAY, ROOT, SETUP_SCRIPT, cluster_exports, free_port, process_name, session_pids
from sshserver import SSHServer, cmdline, environ, missing

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
    assert aws["ALLITER_STORAGE"].startswith("s3://")
    assert aws["ALLITER_GPUS_PER_TRIAL"] == onprem["ALLITER_GPUS_PER_TRIAL"]
    assert onprem["ALLITER_VENV"] == "~/alliter-venv" and "ALLITER_VENV" not in aws  # the DLAMI has its venv


@pytest.mark.parametrize("name", CONFIGS)
def test_every_file_mount_exists_and_every_command_parses(name):
    """What `ray up` would find broken only on the first real run (after paying for a head node)."""
    config = load(name)
    for remote, local in config["file_mounts"].items():
        if (remote, local) == TOKEN_MOUNT:
            continue  # the user's own, made by `ray get-auth-token --generate` (the docs' first step)
        assert (ROOT / local).exists(), local
    from ray.autoscaler._private.command_runner import _with_interactive

    for key in COMMAND_LISTS:
        for command in config[key]:
            # as the launcher's SSH runner sends it: inside its login shell's `source ~/.bashrc; ... && (command)`
            shell = shlex.split(_with_interactive(command)[-1])[0]
            res = subprocess.run(["bash", "-n", "-c", shell], capture_output=True, text=True)
            assert res.returncode == 0, f"{key}: {command}: {res.stderr}"
    for script in ("cluster/setup.sh", "cluster/start.sh"):
        res = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "ray get-auth-token --generate" in docs


def test_start_script_keeps_the_dashboard_on_the_heads_loopback():
    """A site's extra `ray start` flags cannot bind the dashboard elsewhere: refused before Ray is touched."""
    env = {**os.environ, "ALLITER_RAY_START_FLAGS": "--num-gpus=1 --dashboard-host=10.1.2.3"}
    res = subprocess.run(["bash", str(ROOT / "cluster" / "start.sh"), "ray", "start", "--head"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "the dashboard stays on the head's loopback" in res.stderr, res.stderr


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

    from alliter.sweep import cluster

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
    """A `ray` command of this machine's Ray, from the repository root (file_mounts copies "."); its output
    is added to `log` too."""
    res = subprocess.run([*RAY, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=timeout)
    with log.open("a") as out:
        out.write(f"\n$ ray {shlex.join(args)}\n{res.stdout}")
    return res


def user_processes(server: SSHServer) -> dict[int, list[str]]:
    """pid -> command line of the test user's processes but sshd's own (the sessions of the SSH connections
    that Ray's runner shares between commands, which outlive a command by 10 s) and those already exiting."""
    found = {pid: cmdline(pid) for pid in server.user_pids() if process_name(pid) != "sshd"}
    return {pid: args for pid, args in found.items() if args}  # an empty command line: a process on its way out


def cluster_name(server: SSHServer) -> str:
    return f"alliter-test-{server.user.rsplit('-', 1)[1]}"


def ssh_control_dir(cluster: str) -> Path:
    """Where Ray's SSH runner keeps its shared connections' sockets for a cluster (as its command_runner.py
    names it: /tmp/ray_ssh_<user hash>/<cluster hash>)."""
    user, name = (hashlib.sha256(s.encode()).hexdigest()[:10] for s in (getpass.getuser(), cluster))
    return Path(f"/tmp/ray_ssh_{user}") / name


def client_pids(server: SSHServer) -> list[int]:
    """This side's ssh processes for the server (each names the test's client key)."""
    key = str(server.client_key)
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if key in cmdline(pid)]


def gcs_nodes(address: str, token: Path | None) -> str:
    """The GCS's answer to a client of this machine, with or without the token: its node count or its error."""
    code = ("import sys\nfrom ray._raylet import GcsClient\ntry:\n"
            "    print(len(GcsClient(address=sys.argv[1]).get_all_node_info(timeout=20)), 'nodes')\n"
            "except Exception as err:\n    print(type(err).__name__, err)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "token" if token else "disabled"
    if token:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip()


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"nothing listens on {port}"
            time.sleep(0.2)


@pytest.fixture()
def ssh_server():
    """The test's SSH server and user, whose machine has this Python on PATH and Ray's temp folder in the
    user's home (on a machine shared by users, /tmp/ray is everybody's)."""
    server = SSHServer()
    try:
        server.start(bashrc=f"export PATH={Path(sys.executable).parent}:$PATH\n"
                            f"export RAY_TMPDIR={server.home / 'tmp'}\nexport RAY_USAGE_STATS_ENABLED=0\n")
        (server.home / "tmp").mkdir()
        os.chown(server.home / "tmp", server.uid, server.uid)
        yield server
    finally:
        for pid in client_pids(server):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.stop()
        control = ssh_control_dir(cluster_name(server))
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.parent.rmdir()  # only if no other cluster's is left in it


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=f"the launcher test's SSH server: {missing()}")
def test_ray_up_runs_a_sweep_through_ray_exec_and_ray_down_stops_everything(ssh_server, tmp_path):
    server, home = ssh_server, ssh_server.home
    started, times = time.time(), {}
    ports = {name: free_port() for name in ("gcs", "object_manager", "dashboard", "client", "agent", "tunnel")}
    local = server.root / "local"  # this side's HOME and temp folder: the token, Ray's state file and config cache
    (local / "tmp").mkdir(parents=True)
    env = {**os.environ, "HOME": str(local), "TMPDIR": str(local / "tmp"), "RAY_TMPDIR": str(local / "tmp"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path / "launcher.log"

    # cluster-onprem.yaml as it is (file_mounts, start lines, ...) with this machine as its head and the test's
    # user and key; its settings line as a site would write it, with free ports, and offline (--no-index:
    # nothing is downloaded; --no-deps: the extras of ray[default] are not installed here)
    config = load("cluster-onprem.yaml")
    config["cluster_name"] = cluster_name(server)
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": server.user, "ssh_private_key": str(server.client_key),
                      "ssh_proxy_command": server.proxy_command()}
    settings = {**cluster_exports(config), "ALLITER_STORAGE": "~/results",
                "ALLITER_PIP_FLAGS": "--no-index --no-deps --no-build-isolation",
                "ALLITER_RAY_PORT": str(ports["gcs"]), "ALLITER_OBJECT_MANAGER_PORT": str(ports["object_manager"]),
                "ALLITER_RAY_START_FLAGS": f"--dashboard-port={ports['dashboard']} --ray-client-server-port="
                f"{ports['client']} --dashboard-agent-listen-port={ports['agent']} "
                "--min-worker-port=0 --max-worker-port=0"}
    config["setup_commands"] = [f"bash {SETUP_SCRIPT} " + shlex.join(f"{k}={v}" for k, v in settings.items())]
    path = server.root / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))

    # without a Ray token, `ray up` stops where docs/cluster.md says, naming the file; then the docs' fix
    token = local / ".ray" / "auth_token"
    res = ray_cli("up", "-y", "--no-config-cache", str(path), env=env, log=log, timeout=480)
    assert res.returncode != 0 and f"No such file or directory: '{token}'" in res.stdout, res.stdout[-3000:]
    res = ray_cli("get-auth-token", "--generate", env=env, log=log, timeout=120)
    assert res.returncode == 0 and token.read_text().strip(), res.stdout[-2000:]
    res = ray_cli("up", "-y", "--no-config-cache", str(path), env=env, log=log, timeout=480)
    times["ray up"] = time.time() - started
    assert res.returncode == 0, log.read_text()[-5000:]
    assert ssh_control_dir(config["cluster_name"]).is_dir()  # what the teardown removes
    # the project was copied: every tracked file, byte for byte, and no git history
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    copy_of = home / "alliter"
    differ = [f for f in tracked if (ROOT / f).is_file()
              and not ((copy_of / f).is_file() and (copy_of / f).read_bytes() == (ROOT / f).read_bytes())]
    assert not differ, differ
    assert not (copy_of / ".git").exists()
    assert (home / "ray_bootstrap_key.pem").read_bytes() == server.client_key.read_bytes()
    bootstrap = yaml.safe_load((home / "ray_bootstrap_config.yaml").read_text())
    assert {k: bootstrap["provider"][k] for k in ("type", "head_ip", "worker_ips")} == config["provider"]
    assert bootstrap["cluster_name"] == config["cluster_name"]
    # the project is installed in the venv, which sees the machine's packages: the head's python imports it there
    venv = home / "alliter-venv"
    found = server.ssh("source ~/.bashrc && cd / && python -c 'import alliter; print(alliter.__file__)'")
    assert Path(found.stdout.strip()).is_relative_to(venv / "lib"), (found.stdout, found.stderr)
    # the head was started by the launcher's start line: the GCS on its port, the autoscaler with the config
    # `ray up` wrote, every Python process of Ray and its workers on the venv's interpreter
    head = user_processes(server)
    names = {process_name(pid) for pid in head}
    assert {"gcs_server", "raylet"} <= names, head
    (gcs,) = [pid for pid in head if process_name(pid) == "gcs_server"]
    assert f"--gcs_server_port={ports['gcs']}" in head[gcs]
    # what the launcher exports before the head start line (ray/autoscaler/_private/commands.py) is in its environment
    assert {k: environ(gcs).get(k) for k in ("RAY_CLOUD_INSTANCE_ID", "RAY_NODE_TYPE_NAME")} == {
        "RAY_CLOUD_INSTANCE_ID": "127.0.0.1", "RAY_NODE_TYPE_NAME": "local.cluster.node"}
    (monitor,) = [args for args in head.values() if any(a.endswith("autoscaler/v2/monitor.py") for a in args)]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in monitor  # the head line's, as given
    assert all(args[0] == str(venv / "bin" / "python3") for args in head.values() if "python" in Path(args[0]).name)
    (raylet,) = [args for pid, args in head.items() if process_name(pid) == "raylet"]
    assert any(a.startswith(f"--python_worker_command={venv / 'bin' / 'python3'} ") for a in raylet)
    # the dashboard on the head's loopback (cluster/start.sh)
    (dashboard,) = [args for args in head.values() if any(a.endswith("dashboard/dashboard.py") for a in args)]
    assert "--host=127.0.0.1" in dashboard and f"--port={ports['dashboard']}" in dashboard
    # token authentication, on because file_mounts brought the token: every Ray process has it (not those that
    # retitle themselves, ray::... and, with ray[default], the dashboard's modules ray-dashboard-...: a new title
    # overwrites what /proc shows of their environment)
    environs = {pid: environ(pid) for pid, args in head.items() if not args[0].startswith(("ray::", "ray-dashboard-"))}
    without = {pid: head[pid] for pid, e in environs.items() if e and e.get("RAY_AUTH_MODE") != "token"}
    assert {"gcs_server", "raylet"} <= {process_name(pid) for pid in environs} and not without, without
    times["checks"] = time.time() - started

    # `ray dashboard` tunnels a port of the head to this side over SSH (here the GCS's: the dashboard's HTTP
    # server is not there); through it, the GCS answers a client with the token and refuses one without
    with (tmp_path / "tunnel.log").open("w") as out:
        tunnel = subprocess.Popen([*RAY, "dashboard", str(path), "--port", str(ports["tunnel"]), "--remote-port",
                                   str(ports["gcs"])], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_for_port(ports["tunnel"], tunnel, timeout=60)
        through = f"127.0.0.1:{ports['tunnel']}"
        assert gcs_nodes(through, token) == "1 nodes"
        refused = gcs_nodes(through, None)
        assert refused.startswith("AuthenticationError") and "InvalidAuthToken" in refused, refused
    finally:
        for pid in session_pids(tunnel.pid):
            os.kill(pid, signal.SIGKILL)
        tunnel.wait()
    times["tunnel"] = time.time() - started

    # the sweep, as docs/cluster.md runs it, on the head through `ray exec`: it joins the head's Ray with
    # --address auto (the address file of `ray start --head`), finds the launcher's autoscaler through the
    # bootstrap config and says so; CPU trials (the config's ALLITER_GPUS_PER_TRIAL=1 is for GPU machines)
    res = ray_cli("exec", str(path), "cd ~/alliter && python tune_jobs/sweep.py --betas 0,1 --max-generations 20 "
                  "--gpus-per-trial 0 --address auto --name launcher", env=env, log=log, timeout=480)
    times["ray exec"] = time.time() - started
    assert res.returncode == 0, log.read_text()[-5000:]
    said = [line.strip() for line in unfolded(res.stdout) if line.strip().startswith("autoscaler:")]
    assert said == [f"autoscaler: the cluster launcher's, from {home / 'ray_bootstrap_config.yaml'} (provider local); "
                    "it may add no node"], said
    exp = home / "results" / "launcher"  # ALLITER_STORAGE=~/results: the sweep's default --storage
    assert {b: s["status"] for b, s in trial_states(exp).items()} == {0.0: "TERMINATED", 1.0: "TERMINATED"}
    for beta in ("0", "1"):
        assert generation_indices(trial_dir(exp, beta)) == list(range(20))  # every generation exactly once

    # `ray down` runs `ray stop` on the head: every process the launcher started there ends
    before = user_processes(server)
    assert {"gcs_server", "raylet"} <= {process_name(pid) for pid in before}
    res = ray_cli("down", "-y", str(path), env=env, log=log, timeout=300)
    times["ray down"] = time.time() - started
    assert res.returncode == 0, log.read_text()[-5000:]
    deadline = time.time() + 30
    while (left := [pid for pid in before if pid in user_processes(server)]) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, {pid: before[pid] for pid in left}
    assert not user_processes(server)  # nor anything else of the user's, but sshd's sessions
    state = json.loads((local / "tmp" / "ray" / f"cluster-{config['cluster_name']}.state").read_text())
    assert state["127.0.0.1"]["state"] == "terminated"
    print("launcher: " + ", ".join(f"{k} done at {v:.0f} s" for k, v in times.items()))
