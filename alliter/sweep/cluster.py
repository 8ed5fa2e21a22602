"""Can the Ray cluster run a trial? Its nodes' resources now, and what its autoscaler may add.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

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
