"""Your tracker sees the sweep: one sweep to a real MLflow tracking server and to W&B offline (a sqlite store, resumed:
tests/test_resume.py), TensorBoard's HParams, and the refusals before Ray starts. Every server listens on 127.0.0.1
and is stopped by its process id."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import BEST_BETA, ONE_AT_A_TIME, check_mlflow_runs, read_jsonl, sweep, sweep_main

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install \"alliter[mlflow]\") is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a sqlite store and a local artifact folder, on a free port of 127.0.0.1."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", (tmp_path / "artifacts").as_uri()],
        # MLflow 3's job runner (GenAI jobs, 7 processes, ~20 CPU-s here) is not the tracking these tests use
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "mlflow-server.log").read_text()
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, by the group of its process id
        server.wait()
        log.close()


TINY = ["--betas", "0,1", "--max-generations", "40", "--snapshot-every", "20", "--eval-samples", "10", *ONE_AT_A_TIME]


WANDB_OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_server, tiny_gpt_neo) -> Path:
    """One sweep to both trackers (the MLflow server, W&B offline in its folder's wandb/), then best_beta's choice
    logged to both, with an export."""
    pytest.importorskip("wandb", reason="the wandb extra (pip install \"alliter[wandb]\") is not installed")
    tmp_path = tmp_path_factory.mktemp("tracked")
    env = {**WANDB_OFFLINE, "WANDB_DIR": str(tmp_path / "wandb")}
    (tmp_path / "wandb").mkdir()
    res = sweep(*TINY, "--model", str(tiny_gpt_neo), "--mlflow", mlflow_server, "--wandb", "alliter-test",
                "--storage", str(tmp_path), "--name", "tracked", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = subprocess.run([*BEST_BETA, str(tmp_path / "tracked"), "--mlflow", mlflow_server, "--wandb", "alliter-test",
                          "--export", str(tmp_path / "model"), "--out", str(tmp_path / "analysis")],
                         capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path


@pytest.mark.slow
def test_a_sweep_logs_to_an_mlflow_server_and_best_beta_logs_its_choice_beside_it(tracked, mlflow_server):
    from mlflow.tracking import MlflowClient

    check_mlflow_runs(mlflow_server, tracked / "tracked", "tracked")
    client = MlflowClient(mlflow_server)
    (summary,) = [r for r in client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
                  if r.data.tags.get("alliter.role") == "best_beta"]
    choice = json.loads(subprocess.run([*BEST_BETA, str(tracked / "tracked"), "--json", "--out",
                                        str(tracked / "again")], capture_output=True, text=True).stdout)
    assert float(summary.data.params["best_point.beta"]) == choice["best_point"]["value"]
    assert summary.data.params["export"] == str((tracked / "model").resolve())
    assert summary.data.metrics["best_point.alliteration"] == pytest.approx(choice["best_point"]["alliteration"])
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"summary.csv", "points.csv", "report.html", "evaluations.png", "model"} <= artifacts
    assert "model.safetensors" in {Path(a.path).name for a in client.list_artifacts(summary.info.run_id, "model")}


@pytest.mark.slow
def test_a_sweep_logs_to_wandb_offline(tracked):
    runs = sorted((tracked / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3
    choice = [p for p in runs if run_record(p).display_name == "best_beta"]
    (logged,) = [{key_of(i): json.loads(i.value_json) for i in r.history.item} for r in wandb_records(choice[0])
                 if r.WhichOneof("record_type") == "history"]
    assert logged["summary/_type"] == logged["best_point_stories/_type"] == "table-file"
    assert logged["summary/nrows"] == 2 and logged["best_point_stories/nrows"] > 0
    assert logged["plots/evaluations/_type"] == "image-file"
    runs.remove(choice[0])
    for path in runs:
        run = run_record(path)
        records = wandb_records(path)
        assert run.project == "alliter-test" and run.run_group == "tracked"
        config = {key_of(item): json.loads(item.value_json) for r in records
                  if r.WhichOneof("record_type") == "config" for item in r.config.update}
        history = [{key_of(item): json.loads(item.value_json) for item in r.history.item} for r in records
                   if r.WhichOneof("record_type") == "history"]
        (trial,) = (tracked / "tracked").glob(f"*_{run.run_id}")
        rows = read_jsonl(trial / "metrics.jsonl")
        assert config["beta"] == rows[0]["beta"] and config["recipe"] == "study"
        logged = [(h["generations"], h["raw_reward_mean"]) for h in history if "raw_reward_mean" in h]
        assert [g for g, _ in logged] == [r["generations"] for r in rows]
        assert [v for _, v in logged] == pytest.approx([r["raw_reward_mean"] for r in rows])


def run_record(path: Path, wait: float = 20.0):
    """An offline run file's run record; W&B's core may still be writing the file when its process has ended."""
    deadline = time.time() + wait
    while True:
        runs = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
        if runs or time.time() > deadline:
            assert runs, f"{path} holds no run record"
            return runs[0]
        time.sleep(0.5)


def key_of(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file, as W&B's protobuf (wandb.proto) defines them. wandb 0.31 has no
    Python reader of its own any more (its core writes the file): this reads its framing, LevelDB's log format
    (32 KiB blocks of records with a 7-byte header: CRC-32C, length, type full/first/middle/last) after W&B's
    7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, position, records, parts = 32768, 7, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        if kind == 0 and length == 0:
            break
        parts += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, or the last part
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def test_tensorboard_s_hparams_dashboard_has_each_trials_settings(tmp_path, tiny_gpt_neo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from alliter.config import TrainConfig
    from alliter.train.trainer import HPARAM_METRICS, Trainer

    trainer = Trainer(TrainConfig(beta=3.0, kl_target=0.2, model=str(tiny_gpt_neo), max_generations=20,
                                  snapshot_every=10, eval_samples=5, threads=1, seed=4), tmp_path)
    for _ in trainer.groups():
        pass
    events = EventAccumulator(str(tmp_path)).Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["beta"].number_value == 3.0 and start.hparams["kl_target"].number_value == 0.2
    assert start.hparams["seed"].number_value == 4 and start.hparams["recipe"].string_value == "study"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert set(HPARAM_METRICS) <= set(events.Tags()["scalars"])  # the dashboard's metrics are the evaluations'


# case -> (flags, the one line's words); every case is refused before Ray starts, with nothing written
TRACKER_CASES = {
    "mlflow missing": (["--mlflow", "{tmp}/mlruns"], "--mlflow needs mlflow, which is not installed: pip install "
                       "\"alliter[mlflow]\""),
    "server not answering": (["--mlflow", "http://127.0.0.1:{port}"], "the tracking server does not answer within 5 s"),
    "a bad uri": (["--mlflow", "ftp://somewhere/x"], "alliter takes a folder, sqlite:///path.db or http://host:port"),
    "an empty uri": (["--mlflow", ""], "--mlflow is empty: pass a folder, sqlite:///path.db or http://host:port"),
    "a blank uri": (["--mlflow", "  "], "--mlflow is empty"),
    "a folder of MLflow's file store": (["--mlflow", "{filestore}"], "the folder holds MLflow file store runs, which "
                                        "MLflow 3 no longer writes; migrate them (mlflow migrate-filestore)"),
    "group without wandb": (["--wandb-group", "g"], "--wandb-group names the wandb of --wandb: pass --wandb too"),
    "a W&B project with a slash": (["--wandb", "team/project"], "--wandb 'team/project' holds '/': a W&B project's "
                                   "name has at most 128 characters"),
    "a W&B project of 200 characters": (["--wandb", "p" * 200], "is 200 characters: a W&B project's name has at most"),
    "an empty W&B project": (["--wandb", ""], "--wandb '' is empty"),
    "a W&B group of 200 characters": (["--wandb", "p", "--wandb-group", "g" * 200], "--wandb-group: a W&B group's name "
                                      "has 1 to 128 characters, got 200"),
    "W&B online without a login": (["--wandb", "p"], "--wandb: W&B is online (WANDB_MODE) and not logged in: run "
                                   "`wandb login`"),
}


@pytest.mark.parametrize("case", list(TRACKER_CASES))
def test_a_tracker_that_cannot_work_is_one_line_before_ray_starts(case, tmp_path, monkeypatch):
    args, message = TRACKER_CASES[case]
    filestore = tmp_path / "old-mlruns"
    (filestore / "0").mkdir(parents=True)
    (filestore / "0" / "meta.yaml").write_text("name: Default\n")
    args = [a.format(tmp=tmp_path, port=free_port(), filestore=filestore) for a in args]
    if case == "mlflow missing":
        monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    if case == "W&B online without a login":
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no login
    else:
        monkeypatch.setenv("WANDB_MODE", "offline")
    start = time.perf_counter()
    res = sweep_main("--betas", "1", *args, "--storage", str(tmp_path / "results"))
    assert time.perf_counter() - start < 30
    assert res.returncode == 2 and message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-mlruns"]  # nothing written


def test_best_beta_logs_to_a_folder_as_a_sqlite_store_in_it_and_writes_nothing_elsewhere(tmp_path):
    """MLflow 3 refuses a folder as its file store: --mlflow FOLDER keeps the runs in FOLDER/mlflow.db, the artifacts in
    FOLDER/artifacts, and says so in one line; W&B's run, its staging and logs go beside the analysis (the command in
    a process of its own, run from an empty folder with an empty $HOME: W&B keeps its settings per process)."""
    import random

    from mlflow.tracking import MlflowClient

    from helpers import varied_groups, write_trial

    rng = random.Random(5)
    for beta in (0.0, 10.0):
        write_trial(tmp_path / "sweep" / f"beta={beta:g}_x", beta, varied_groups(rng, 20, 2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), **WANDB_OFFLINE)
    res = subprocess.run([*BEST_BETA, str(tmp_path / "sweep"), "--mlflow", "runs", "--wandb", "p", "--json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"mlflow: --mlflow runs is a folder, and MLflow 3 keeps runs in a database: they go to sqlite:///{tmp_path}" \
        in res.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep")
    (run,) = client.search_runs([experiment.experiment_id])
    assert float(run.data.params["choice.beta"]) == json.loads(res.stdout)["choice"]["beta"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "summary.csv"}
    assert (tmp_path / "runs" / "artifacts").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "runs", "sweep"]  # no ./mlruns, no ./wandb
    assert not [p for p in (tmp_path / "home").rglob("*") if "wandb" in p.name]  # W&B's data and logs not in $HOME
    assert list((tmp_path / "sweep" / "analysis" / "wandb").glob("offline-run-*"))
