"""Can the Ray cluster run a trial? Checked before Ray starts (the address answers, the machine has the CPUs and GPUs
a trial asks for) and once connected (a node, or one its autoscaler may add, fits a trial; the trial slots now).

Tune leaves a trial PENDING for as long as no node has its resources, in silence, which is right
while an autoscaler is adding a node and wrong everywhere else. The autoscaler is found the ways Ray
records it: the cluster launcher's config on the head node (~/ray_bootstrap_config.yaml, which Ray
Tune checks too; the `local` provider's one node type names no resources, since Ray detects them on
each listed machine), the cluster config that autoscaler v2 and KubeRay publish in the GCS, or the
status the autoscaler (v1, `ray start --autoscaling-config`) publishes, whose node types are named
after the config's rather than after the nodes (a Ray without an autoscaler mirrors each node as
its own type, `node_<id>`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from alliter.cli import AlliterError
from alliter.sweep.console import say

log = logging.getLogger("alliter")

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # written by `ray up` on the head node
AUTOSCALING_STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS
STATUS_WAIT_S = 12.0  # how long a fresh head's autoscaler status may take to name a node type


def fits(required: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in required.items() if amount > 0)


def node_resources() -> list[dict[str, float]]:
    """The total resources of each live node of the connected cluster."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


@dataclass(frozen=True)
class Autoscaler:
    """The cluster's autoscaler as this driver found it."""

    source: str
    """Where it was found, or why none was."""
    node_types: list[dict[str, float]] | None
    """Resources of each node type it may add; [] when it can add none (or none runs); None when an
    autoscaler runs whose node types, or their resources, cannot be read from here."""
    adds: str = ""
    """Which nodes it may add, for people."""

    def line(self) -> str:
        return f"autoscaler: {self.source}" + (f"; it may add {self.adds}" if self.adds else "")


def find_autoscaler(wait_s: float = STATUS_WAIT_S) -> Autoscaler:
    """The connected cluster's autoscaler. Its status (the last way) is read for up to wait_s while it
    names no node type yet: a fresh head publishes its first status before the autoscaler has seen a node."""
    bootstrap = BOOTSTRAP_CONFIG.expanduser()
    if bootstrap.is_file():
        import yaml  # a Ray dependency

        config = yaml.safe_load(bootstrap.read_text()) or {}
        most = {name: t.get("max_workers", config.get("max_workers", 0))
                for name, t in config.get("available_node_types", {}).items()}
        # the local provider's node type has no resources: Ray detects them on each listed machine
        resources = {name: config["available_node_types"][name].get("resources") or {}
                     for name, n in most.items() if n > 0}
        adds = ", ".join(f"up to {most[name]} {name} ({describe(r) if r else 'resources as Ray detects them'})"
                         for name, r in resources.items())
        provider = config.get("provider", {}).get("type", "?")
        return Autoscaler(f"the cluster launcher's, from {bootstrap} (provider {provider})",
                          None if not all(resources.values()) else list(resources.values()), adds or "no node")
    try:
        from ray._private.state import state

        published = state.get_cluster_config()
    except Exception:  # an older Ray, or a GCS that does not keep it
        published = None
    if published is not None and published.node_group_configs:
        groups = [g for g in published.node_group_configs if g.max_count != 0]
        adds = ", ".join(f"{g.name} ({describe(dict(g.resources))})" for g in groups) or "no node"
        return Autoscaler("the cluster config in Ray's GCS (autoscaler v2, KubeRay)",
                          [dict(g.resources) for g in groups], adds)
    deadline = time.time() + wait_s
    while True:
        mapping = ((_autoscaling_status() or {}).get("autoscaler_report") or {}).get("node_type_mapping") or {}
        if mapping or time.time() > deadline:
            break
        time.sleep(1)
    named = sorted({t for node, t in mapping.items() if t != f"node_{node}"})
    if named:
        return Autoscaler(f"the one that publishes Ray's autoscaling status (its nodes' types: {', '.join(named)})",
                          None, "nodes of the types in its config (not published with the status)")
    if mapping:
        return Autoscaler("none (Ray's autoscaling status lists each node as its own type)", [])
    return Autoscaler(f"none found (no {BOOTSTRAP_CONFIG}, no cluster config in Ray's GCS, and Ray's autoscaling "
                      f"status named no node type {f'within {wait_s:g} s' if wait_s else 'yet'})", [])


def _autoscaling_status() -> dict[str, Any] | None:
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(AUTOSCALING_STATUS_KEY)
        return json.loads(raw) if raw else None
    except Exception:
        return None


def describe(required: dict[str, float]) -> str:
    return " and ".join(f"{amount:g} {name}" for name, amount in required.items() if amount > 0) or "nothing"


# --- before Ray starts ---------------------------------------------------------------------------------------


def check_address(address: str) -> None:
    """Fail fast, in one line, on a host:port nobody answers on (ray.init would retry for a minute)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise AlliterError(f"--address {address!r} is not host:port, auto or ray://host:port; check --address or "
                           "RAY_ADDRESS")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as err:
        raise AlliterError(f"cannot reach a Ray cluster at {address!r} ({err}); check --address or RAY_ADDRESS") from None


def local_gpus() -> int | None:
    """GPUs on this machine by Ray's own count (None: another Ray, that cannot say)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        return get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception:  # noqa: BLE001 - the check after ray.init still runs
        return None


def check_devices(address: str | None, gpus: float | None, cpus: float, device: str) -> None:
    """The GPUs and CPUs a trial asks for must be here, before a Ray is started on this machine; a trial that asks
    torch for CUDA must be given a GPU."""
    cpus_here = None if address else os.cpu_count()
    if cpus_here and cpus > cpus_here:
        raise AlliterError(f"--cpus-per-trial {cpus:g}, but this machine has {cpus_here} CPUs and no Ray cluster was "
                           "given (--address); pass --cpus-per-trial 1")
    here = None if address else local_gpus()
    if here is not None and (gpus or 0) > here:
        raise AlliterError(
            f"--gpus-per-trial {gpus:g}, but this machine has {here} GPU(s) and no Ray cluster was given (--address); "
            "pass --gpus-per-trial 0 to run the trials on CPUs"
        )
    if device.startswith("cuda") and (gpus == 0 or (gpus is None and here == 0)):
        raise AlliterError(f"--device {device}, but the trials get no GPU (--gpus-per-trial 0, or none here); "
                           "pass --gpus-per-trial 1, or --device auto")


# --- once connected ------------------------------------------------------------------------------------------


def check_fits(required: dict[str, float], address: str | None) -> None:
    """A trial must fit on a node of the cluster, or on a node its autoscaler may add (then say, once, that
    the trials wait for it); otherwise Tune would leave every trial PENDING forever, in silence."""
    fits_now = any(fits(required, node) for node in node_resources())
    scaler = find_autoscaler(0 if fits_now else STATUS_WAIT_S) if address else None  # none if started here
    if scaler:
        say(scaler.line())
    if fits_now:
        return
    types = scaler.node_types if scaler else []
    if types is None or any(fits(required, t) for t in types):
        log.warning("alliter: no node of the Ray cluster has %s for a trial yet: the trials wait for the autoscaler "
                    "to add one (`ray status` shows its progress)%s", describe(required),
                    "" if types is not None else "; if none of its node types has that, they wait forever")
        return
    have = "; ".join(describe({k: n.get(k, 0) for k in required}) for n in node_resources())
    ray.shutdown()  # nothing was started on the cluster
    raise AlliterError(
        f"no node of the Ray cluster at {address or 'this machine'} has {describe(required)} for a trial "
        f"(its nodes: {have or 'none'}) and {'no autoscaler' if not types else 'no node type of its autoscaler'} can "
        "add one; lower --gpus-per-trial / --cpus-per-trial (--gpus-per-trial 0 runs on CPUs)"
    )


def trial_slots(cpus: float, gpus: float) -> int:
    """Trials of `cpus` CPUs and `gpus` GPUs that this Ray cluster runs at once now."""
    resources = ray.cluster_resources()
    slots = math.floor(resources.get("CPU", 0) / cpus + 1e-9) if cpus > 0 else 10**6
    if gpus > 0:
        slots = min(slots, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    return max(1, slots)
