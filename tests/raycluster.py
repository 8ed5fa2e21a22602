"""Ray clusters on this machine for the tests: a head and worker nodes (or Ray's fake autoscaler).

Every node is a `ray start --block` process in a session of its own, so a test stops exactly what it
started by process id (every process of those sessions), never with `ray stop`, which would stop
every Ray on the machine. Each cluster has its own `--temp-dir`: its logs and sockets are its own,
and it does not overwrite /tmp/ray/ray_current_cluster, which `--address auto` reads; the tests set
RAY_ADDRESS instead, which `ray.init(address="auto")` reads first (Ray's documented order).
The ports Ray would take by default (its client server's 10001, the agents' 52365) are free ports
instead, so that clusters of parallel tests do not collide. Nodes are given 127.0.0.1, which Ray
replaces by the machine's address, and Ray's gRPC servers listen on all interfaces (Ray 2.60 has no
setting for either).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
# the fake provider names the head's node type so (ray.autoscaler._private.fake_multi_node)
FAKE_HEAD_TYPE = "ray.head.default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of every process of a test cluster and of the sweep driver that joins it."""
    # a local ray.init() leaves a token in ~/.ray that a head started later enables and that `ray start
    # --address` does not send: on loopback, run without token auth
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **extra}


def session_pids(sid: int) -> list[int]:
    """Live processes of a session (zombies left out)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(pid)
    return pids


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_args(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def kill_all(pids_now: Callable[[], list[int]], timeout: float = 20) -> None:
    """SIGKILL the processes that `pids_now` lists, by process id, until it lists none (or the timeout)."""
    deadline = time.time() + timeout
    while (pids := pids_now()) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def kill_session(sid: int, timeout: float = 20) -> None:
    """SIGKILL every process of a session, until none is left."""
    kill_all(lambda: session_pids(sid), timeout)
    assert not session_pids(sid), f"processes of session {sid} survived SIGKILL"


# --- cluster.yaml -> Ray's fake multi-node autoscaler -------------------------------------------------


def fake_autoscaling_config(cluster: dict[str, Any], gcs_address: str, idle_timeout_minutes: float) -> dict[str, Any]:
    """The autoscaling config of Ray's `fake_multinode` provider with cluster.yaml's node types.

    The node types keep their names, resources and worker counts (the head's is renamed to the one the
    fake provider gives its head); only the provider (processes of this machine instead of EC2) and the
    idle timeout change. The fake provider's nodes join `gcs_address` (its default is port 6379)."""
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    node_types = {}
    for name, spec in types.items():
        fake = {"resources": copy.deepcopy(spec.get("resources", {})), "node_config": {}}
        if name == head:
            fake["max_workers"] = 0
        else:
            fake["min_workers"] = spec.get("min_workers", 0)
            fake["max_workers"] = spec.get("max_workers", cluster.get("max_workers", 0))
        node_types[FAKE_HEAD_TYPE if name == head else name] = fake
    return {
        "cluster_name": "fake_" + cluster.get("cluster_name", "alliter"),
        "max_workers": cluster.get("max_workers", 0),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_TYPE,
        "docker": {},
        "auth": {"ssh_user": "ubuntu"},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


SETUP_SCRIPT = "~/alliter/cluster/setup.sh"  # both cluster configs' setup_commands run it with NAME=VALUE settings


def cluster_exports(cluster: dict[str, Any]) -> dict[str, str]:
    """The environment variables a cluster config's setup commands export on every node: the NAME=VALUE
    settings given to cluster/setup.sh, which writes each into ~/.bashrc."""
    found = {}
    for command in cluster.get("setup_commands", []):
        words = shlex.split(command)
        if words[:2] == ["bash", SETUP_SCRIPT]:
            found.update(word.split("=", 1) for word in words[2:])
    return found


def resource_flags(resources: dict[str, float]) -> list[str]:
    """`ray start` flags for a node type's resources."""
    rest = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    flags = [f"--num-cpus={int(resources.get('CPU', 0))}", f"--num-gpus={int(resources.get('GPU', 0))}"]
    return flags + ([f"--resources={json.dumps(rest)}"] if rest else [])


# --- a cluster ------------------------------------------------------------------------------------------


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path

    @property
    def sid(self) -> int:
        return self.proc.pid  # started with start_new_session: the session's id is its leader's pid

    def raylet_pid(self) -> int | None:
        pids = [p for p in session_pids(self.sid) if process_name(p) == "raylet"]
        return pids[0] if pids else None

    def node_id(self) -> str | None:
        pid = self.raylet_pid()
        for arg in process_args(pid) if pid else []:
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        return None


@dataclass
class RayCluster:
    """A head, and workers added with add_workers(); stop() ends every process they started."""

    env: dict[str, str] = field(default_factory=ray_env)
    port: int = field(default_factory=free_port)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], env: dict[str, str] | None = None) -> Node:
        log = self.temp_dir / f"node{len(self.nodes)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}",
                 *args],
                stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, start_new_session=True,
            )
        node = Node(proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, *flags: str, env: dict[str, str] | None = None, timeout: float = 120,
                   wait: str = "node") -> Node:
        """Start the head and wait until its node has joined ("node"), or only until its GCS answers ("gcs")."""
        head = self._start(
            ["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", f"--ray-client-server-port={free_port()}",
             "--include-dashboard=false", "--disable-usage-stats", *flags], env
        )
        if wait == "gcs":
            self.wait_for_gcs(timeout)
        else:
            self.wait_for_nodes(1, timeout)
        return head

    def wait_for_gcs(self, timeout: float) -> None:
        """Until the GCS answers a client (a GCS client waits 40 s for a port nobody listens on: the port first)."""
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                self.node_infos()
                return
            except Exception:  # not listening yet, or not serving yet
                dead = [n for n in self.nodes if n.proc.poll() is not None]
                if dead or time.time() > deadline:
                    why = dead[0].log.read_text()[-3000:] if dead else "timeout"
                    raise RuntimeError(f"the GCS did not start: {why}")
                time.sleep(0.05)

    def add_workers(self, count: int, *flags: str, timeout: float = 120) -> list[Node]:
        """Start `count` worker nodes, one after the other (two raylets registering at once on a busy
        2-core machine can miss Ray's 30 s start-up deadline), each joined before the next starts."""
        nodes = []
        for _ in range(count):
            before = len(self.alive_nodes())
            nodes.append(self._start([f"--address={self.address}", *flags]))
            self.wait_for_nodes(before + 1, timeout)
        return nodes

    def node_infos(self) -> dict[str, Any]:
        """node id (hex) -> GcsNodeInfo, dead nodes included, from the GCS (no driver needed)."""
        from ray._raylet import GcsClient

        infos = GcsClient(address=self.address).get_all_node_info(timeout=10)
        return {info.node_id.hex(): info for info in infos.values()}

    def alive_nodes(self) -> dict[str, Any]:
        try:
            return {k: v for k, v in self.node_infos().items() if v.state == 0}  # GcsNodeInfo.ALIVE
        except Exception:  # the GCS is not up yet
            return {}

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while len(self.alive_nodes()) < count:
            dead = [n for n in self.nodes if n.proc.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"Ray nodes did not start: {dead[0].log.read_text()[-3000:] if dead else 'timeout'}")
            time.sleep(0.3)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            kill_session(node.sid)
            node.proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
