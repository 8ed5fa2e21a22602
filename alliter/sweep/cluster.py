"""Can the Ray cluster run a trial? Its nodes' resources now, and what its autoscaler may add.

Tune leaves a trial PENDING for as long as no node has its resources, in silence, which is right
while an autoscaler is adding a node and wrong everywhere else. The autoscaler is found the ways Ray
records it: the cluster launcher's config on the head node (~/ray_bootstrap_config.yaml, which Ray
Tune checks too), the cluster config that autoscaler v2 and KubeRay publish in the GCS, or the
status the autoscaler (v1, `ray start --autoscaling-config`) publishes, whose node types are named
after the config's rather than after the nodes (a Ray without an autoscaler mirrors each node as
its own type, `node_<id>`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ray

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # written by `ray up` on the head node
AUTOSCALING_STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS


def fits(required: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in required.items() if amount > 0)


def node_resources() -> list[dict[str, float]]:
    """The total resources of each live node of the connected cluster."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def autoscaler_node_types(wait_s: float = 12.0) -> list[dict[str, float]] | None:
    """Resources of each node type the cluster's autoscaler may add; [] without an autoscaler; None
    when an autoscaler runs whose node types cannot be read from here (it may or may not add a fit)."""
    bootstrap = BOOTSTRAP_CONFIG.expanduser()
    if bootstrap.is_file():
        import yaml  # a Ray dependency

        config = yaml.safe_load(bootstrap.read_text()) or {}
        return [t.get("resources", {}) for t in config.get("available_node_types", {}).values()
                if t.get("max_workers", config.get("max_workers", 0)) > 0]
    try:
        from ray._private.state import state

        published = state.get_cluster_config()
    except Exception:  # an older Ray, or a GCS that does not keep it
        published = None
    if published is not None and published.node_group_configs:
        return [dict(g.resources) for g in published.node_group_configs if g.max_count != 0]
    deadline = time.time() + wait_s
    while True:  # the autoscaler publishes its status every few seconds; a fresh cluster may not have yet
        status = _autoscaling_status()
        if status is not None or time.time() > deadline:
            break
        time.sleep(1)
    mapping = ((status or {}).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    if any(node_type != f"node_{node}" for node, node_type in mapping.items()):
        return None
    return []


def _autoscaling_status() -> dict[str, Any] | None:
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(AUTOSCALING_STATUS_KEY)
        return json.loads(raw) if raw else None
    except Exception:
        return None


def describe(required: dict[str, float]) -> str:
    return " and ".join(f"{amount:g} {name}" for name, amount in required.items() if amount > 0) or "nothing"
