"""Your tracker, the checks both commands share: a tracker asked for (--mlflow, --wandb) that cannot work is one line
before anything starts (its package, its server, its names). What logs to it lives with what it logs:
alliter.sweep.trackers (Tune's logger callbacks, one run per trial) and alliter.analyse.trackers (best_beta's choice
beside the trials).

Each is an optional extra (`pip install "alliter[mlflow]"`, `"alliter[wandb]"`), imported only when asked for: the
driver still never imports torch.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from alliter.cli import AlliterError, one_line

ANSWER_TIMEOUT_S = 5.0  # a tracking server that does not answer in this is refused before Ray starts


def require(module: str, flag: str, extra: str) -> Any:
    """The tracker's package, or one line that names the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AlliterError(f"{flag} needs {module}, which is not installed: pip install \"alliter[{extra}]\"") from None


MLFLOW_DB = "mlflow.db"  # a --mlflow folder's store, under MLflow 3 (whose file store is in maintenance mode)


def check_mlflow_uri(uri: str, flag: str = "--mlflow") -> str:
    """A tracking URI MLflow can use, checked: a folder (MLflow 3: a sqlite:/// store in it, said in one line; older:
    its file store), sqlite:///path.db (its folder writable), or http(s)://host:port (answering within seconds).
    Returns the URI as MLflow will be given it."""
    if not uri.strip():
        raise AlliterError(f"{flag} is empty: pass a folder, sqlite:///path.db or http://host:port")
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise AlliterError(f"{flag} {uri}: no host (expected http://host:port)")
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=ANSWER_TIMEOUT_S) as answer:
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise AlliterError(f"{flag} {uri}: the tracking server does not answer within {ANSWER_TIMEOUT_S:g} s "
                               f"({one_line(reason if isinstance(reason, BaseException) else err)}); start it, or "
                               "pass a folder or sqlite:///path.db") from None
        return uri
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or len(uri) <= len("sqlite:///"):
            raise AlliterError(f"{flag} {uri}: expected sqlite:///path/to/file.db")
        _writable_folder(Path(uri[len("sqlite:///"):]).expanduser().absolute().parent, flag, uri)
        return uri
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri).expanduser().absolute()
        _writable_folder(folder, flag, uri)
        if int(require("mlflow", flag, "mlflow").__version__.split(".")[0]) < 3:
            return folder.as_uri()
        if folder.is_file() or any(folder.glob("*/meta.yaml")):
            raise AlliterError(f"{flag} {uri}: {'a file' if folder.is_file() else 'the folder holds MLflow file store runs'},"
                               f" which MLflow 3 no longer writes; migrate them (mlflow migrate-filestore) and pass "
                               f"sqlite:///path.db, or pass another folder")
        store = f"sqlite:///{folder / MLFLOW_DB}"
        print(f"mlflow: {flag} {uri} is a folder, and MLflow 3 keeps runs in a database: they go to {store} (its "
              f"artifacts to {folder / 'artifacts'})", file=sys.stderr)
        return store
    raise AlliterError(f"{flag} {uri}: alliter takes a folder, sqlite:///path.db or http://host:port")


def mlflow_experiment(client: Any, name: str) -> str:
    """The id of the experiment `name`, created if need be: a store of a folder's (MLFLOW_DB) keeps its artifacts beside
    it (MLflow's default is ./mlruns wherever the command runs)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    uri = client.tracking_uri
    beside = Path(uri[len("sqlite:///"):]).parent / "artifacts" if uri.startswith("sqlite:///") else None
    return client.create_experiment(name, artifact_location=beside.as_uri() if beside else None)


def _writable_folder(folder: Path, flag: str, uri: str) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise AlliterError(f"{flag} {uri}: cannot write in {existing}")


WANDB_NAME_MAX = 128  # a W&B project's or group's name, and the characters a project's name cannot hold (W&B's rules)
WANDB_PROJECT_CHARS = set("/\\#?%:\r\n")


def check_wandb_names(project: str, group: str | None, flag: str = "--wandb") -> None:
    """A project and group name W&B takes (W&B refuses others late: after the sweep, or with a traceback)."""
    bad = sorted(WANDB_PROJECT_CHARS & set(project))
    if not project.strip() or bad or len(project) > WANDB_NAME_MAX:
        why = "is empty" if not project.strip() else f"holds {', '.join(map(repr, bad))}" if bad else \
            f"is {len(project)} characters"
        raise AlliterError(f"{flag} {project[:40]!r}{'...' if len(project) > 40 else ''} {why}: a W&B project's name has "
                           f"at most {WANDB_NAME_MAX} characters, none of / \\ # ? % :")
    if group is not None and (not group.strip() or len(group) > WANDB_NAME_MAX):
        raise AlliterError(f"{flag}-group: a W&B group's name has 1 to {WANDB_NAME_MAX} characters, got {len(group)}")


def check_wandb(flag: str = "--wandb") -> None:
    """W&B is installed, and offline (WANDB_MODE=offline or disabled) or logged in: online with no login, wandb would
    ask on the terminal of a process nobody types into."""
    wandb = require("wandb", flag, "wandb")
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    try:
        key = os.environ.get("WANDB_API_KEY") or wandb.Api().api_key
    except Exception:  # noqa: BLE001 - wandb.Api() raises its own UsageError without a key
        key = None
    if not key:
        raise AlliterError(f"{flag}: W&B is online (WANDB_MODE) and not logged in: run `wandb login`, or set "
                           "WANDB_MODE=offline and `wandb sync` the runs later")


def check_trackers(trackers: dict[str, str | None]) -> dict[str, str | None]:
    """Each tracker asked for can work (its package, its server): one line otherwise, before Ray starts. Returns the
    settings with the MLflow URI as MLflow will be given it."""
    out = dict(trackers)
    if trackers.get("mlflow") is not None:
        require("mlflow", "--mlflow", "mlflow")
        out["mlflow"] = check_mlflow_uri(trackers["mlflow"])
    if trackers.get("wandb") is not None:
        check_wandb_names(trackers["wandb"], trackers.get("wandb_group"))
        check_wandb()
    return out
