"""cluster.yaml: valid for Ray's own cluster launcher, offline, and safe in the ways users rely on.

Validation is Ray's: `ray.autoscaler._private.util.validate_config` (jsonschema against the
`ray-schema.json` shipped with the installed Ray, plus its cross-field checks), on the file as
written and after `prepare_config` (the defaults merge `ray up` does before validating). Broken
copies prove the validator really rejects things, so the positive checks cannot pass vacuously.
No AWS call, no network, no Ray start.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # a Ray dependency
pytest.importorskip("jsonschema")  # Ray's validate_config needs it
pytest.importorskip("ray.autoscaler._private.util")

from jsonschema import ValidationError  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
STORAGE_PLACEHOLDER = "s3://YOUR-BUCKET/alliter-results"
# the install and start lines, which cluster.yaml's commands run (shared with cluster-onprem.yaml)
SETUP_SH, START_SH = ROOT / "cluster" / "setup.sh", ROOT / "cluster" / "start.sh"


def script_lines(path: Path) -> list[str]:
    """A shell script's commands, comments and blank lines left out."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture()
def config(text) -> dict:
    # safe_load: what `ray up` uses (ray/autoscaler/_private/commands.py)
    return yaml.safe_load(text)


def _pip_installs(commands: list[str]) -> list[list[str]]:
    out = []
    for cmd in (c for c in commands if "pip install" in c):
        for part in cmd.replace("&&", ";").split(";"):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                out.append(words)
    return out


# --- Ray's own validation ---------------------------------------------------------------------


def test_passes_rays_schema_as_written(config):
    validate_config(config)


def test_passes_rays_schema_after_ray_up_defaults_merge(config):
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # the merge must not bring back anything of Ray's defaults that we replaced
    assert prepared["head_start_ray_commands"] == config["head_start_ray_commands"]
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


@pytest.mark.parametrize(
    "path, value, error",
    [
        (("available_node_types", "gpu_worker", "min_workers"), "zero", ValidationError),
        (("available_node_types", "gpu_worker", "resources", "GPU"), 0.5, ValidationError),  # integers only
        (("available_node_types", "gpu_worker", "nodeconfig"), {}, ValidationError),  # unknown key
        (("max_workrs",), 6, ValidationError),  # unknown top-level key (typo)
        (("auth", "ssh_usr"), "ubuntu", ValidationError),
        (("head_node_type",), "gpu", ValueError),  # not one of available_node_types
    ],
)
def test_the_same_validator_rejects_a_broken_copy(config, path, value, error):
    broken = copy.deepcopy(config)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(error):
        validate_config(broken)


def test_the_validator_rejects_a_missing_required_field(config):
    broken = copy.deepcopy(config)
    del broken["available_node_types"]["gpu_worker"]["resources"]
    with pytest.raises(ValidationError):
        validate_config(broken)


def test_start_commands_use_only_real_ray_start_flags(config):
    """e.g. --autoscaling-config (not --autoscaler-config): a typo only shows on a real `ray up`."""
    from ray.scripts.scripts import start

    known = {opt.split("=")[0] for p in start.params for opt in p.opts}
    flags = set()
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        words = shlex.split(cmd)
        assert words[:4] == ["bash", "~/alliter/cluster/start.sh", "ray", "start"], cmd
        flags |= {w.split("=")[0] for w in words[4:]}
    # and the flags cluster/start.sh adds (every --word in its commands is one)
    flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", " ".join(script_lines(START_SH))))
    assert "--object-manager-port" in flags and "--autoscaling-config" in flags
    assert flags <= known, f"unknown ray start flags: {sorted(flags - known)}"


# --- what users rely on -----------------------------------------------------------------------


def test_dashboard_is_bound_to_loopback_only(config, text):
    head_start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head_start  # `ray up` warns unless its head start line says these two
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    (head_role,) = [line for line in script_lines(START_SH) if line.startswith("--head)")]
    assert "--dashboard-host=127.0.0.1" in head_role  # the head's, in cluster/start.sh
    for source in (text, START_SH.read_text(), SETUP_SH.read_text()):
        assert "0.0.0.0" not in source  # no public bind, no world-open ingress rule, not even in a comment
    # no extra security-group rules: Ray's own group admits only SSH from outside
    assert "security_group" not in config["provider"]
    for node_type in config["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"]


def test_node_types(config):
    assert config["cluster_name"] == "alliter"
    assert config["provider"] == {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False}
    assert config["auth"]["ssh_user"] == "ubuntu"
    assert config["head_node_type"] == "head"
    types = config["available_node_types"]
    assert set(types) == {"head", "gpu_worker"}
    assert types["head"]["resources"].get("GPU", 0) == 0
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0
    assert gpu["resources"]["GPU"] == 1
    assert 1 <= gpu["max_workers"] <= config["max_workers"]
    assert gpu["node_config"]["InstanceType"] == "g5.xlarge"
    # head and workers share one AMI (same Python, same torch), set in one place
    assert gpu["node_config"]["ImageId"] == types["head"]["node_config"]["ImageId"]
    # workers write checkpoints to S3 themselves: they need an instance profile
    assert gpu["node_config"].get("IamInstanceProfile")


def test_file_mounts_copy_the_project_without_history_or_results(config):
    # the project, and the user's Ray token (cluster/setup.sh turns token authentication on with it)
    assert config["file_mounts"] == {"~/alliter": ".", "~/.alliter/ray_auth_token": "~/.ray/auth_token"}
    assert any("~/.alliter/ray_auth_token" in line and "token=" in line for line in script_lines(SETUP_SH))
    excluded = set(config["rsync_exclude"])
    assert {"**/.git", "results"} <= excluded
    assert ".gitignore" in config["rsync_filter"]


def test_setup_installs_pinned_ray_and_the_project_without_editable(config):
    assert [shlex.split(c)[:2] for c in config["setup_commands"]] == [["bash", "~/alliter/cluster/setup.sh"]]
    installs = _pip_installs(script_lines(SETUP_SH))
    project = [w for w in installs if "~/alliter" in w]
    assert len(project) == 1, installs
    assert "-e" not in project[0] and "--editable" not in project[0]  # package data must be installed
    ray_pins = [a for w in installs for a in w if a.startswith("ray[")]
    assert ray_pins and all("==" in a for a in ray_pins), ray_pins
    assert any("tune" in a and "default" in a for a in ray_pins)  # Tune + dashboard/job server


def test_storage_placeholder_is_exported_on_every_node(config):
    (setup,) = config["setup_commands"]  # on every node; cluster/setup.sh exports each NAME=VALUE in ~/.bashrc
    assert f"ALLITER_STORAGE={STORAGE_PLACEHOLDER}" in shlex.split(setup)
    assert any(">> ~/.bashrc" in line and "export" in line for line in script_lines(SETUP_SH))
    assert not config["head_setup_commands"] and not config["worker_setup_commands"]


def test_docs_cover_the_workflow():
    docs = (ROOT / "docs" / "cluster.md").read_text()
    for needle in [
        "ray up cluster.yaml",
        "ray dashboard cluster.yaml",
        "ray exec cluster.yaml",
        "ray job submit",
        "ray down cluster.yaml",
        "YOUR-BUCKET",
        "--gpus-per-trial",
        "--address auto",
        "--resume",
        "iam:PassRole",
        "aws s3 sync",
        "analysis/best_beta.py",
        "ray get-auth-token --generate",
        "ray up cluster-onprem.yaml",
    ]:
        assert needle in docs, needle
    assert "0.0.0.0" not in docs
