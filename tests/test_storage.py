"""Sweeps in S3, cluster.yaml's default storage, against a real S3 server on 127.0.0.1 (moto's).

The sweep writes its trials, checkpoints and generations into the bucket; its driver is killed and
`--resume` continues it, finding the newest sweep in the bucket itself (`--resume --name` reads the
same bucket); best_beta.py analyses it from the bucket's URI. The server is told apart from AWS by the
endpoint only: AWS_ENDPOINT_URL (the AWS SDKs' own variable, which pyarrow reads, so also Ray
Tune), or pyarrow's query options in the URI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from alliter import storage as store
from alliter.cli import AlliterError
from alliter.schema import newest_sweep, tune_trials
from raycluster import free_port, kill_session
from helpers import ONE_AT_A_TIME, SWEEP, run_trial, sweep, sweep_main, unfolded

BUCKET = "alliter-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def test_join_keeps_a_uris_query_at_the_end():
    uri = "s3://bucket/prefix/?endpoint_override=127.0.0.1:9000&scheme=http"
    assert store.join(uri, "sweep") == "s3://bucket/prefix/sweep?endpoint_override=127.0.0.1:9000&scheme=http"
    assert store.join("s3://bucket/prefix", "sweep", "trial") == "s3://bucket/prefix/sweep/trial"
    assert store.join("/data/results", "sweep") == "/data/results/sweep"


def test_newest_sweep_is_the_one_whose_tune_state_was_written_last(tmp_path):
    for name, age in (("old", 100), ("new", 10), ("not-a-sweep", 0)):
        (tmp_path / name).mkdir()
        if name != "not-a-sweep":
            state = tmp_path / name / "experiment_state-2026-11-30_10-00-00.json"
            state.write_text("{}")
            os.utime(state, (time.time() - age, time.time() - age))
    assert newest_sweep(str(tmp_path), resumable=True) == "new"
    assert newest_sweep(str(tmp_path / "missing"), resumable=True) is None


def test_a_sweep_uri_is_copied_with_the_files_asked_for_and_never_over_a_local_sweep(tmp_path):
    sweep_dir = tmp_path / "bucket" / "sweep"
    trial = sweep_dir / "beta=1_x"
    (trial / "checkpoint_000001").mkdir(parents=True)
    (trial / "metrics.jsonl").write_text("{}\n")
    (trial / "checkpoint_000001" / "metrics.jsonl").write_text("not this one\n")
    (trial / "result.json").write_text("{}\n")
    uri = f"file://{sweep_dir}"  # any pyarrow URI; S3 is the same code
    dest = tmp_path / "results" / "sweep"
    assert store.download(uri, dest, ["metrics.jsonl"]) == 1
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        store.SOURCE_FILE, "beta=1_x/metrics.jsonl"]
    (trial / "metrics.jsonl").write_text("{}\n{}\n")
    store.download(uri, dest, ["metrics.jsonl"])  # a copy of the same URI is refreshed
    assert (dest / "beta=1_x" / "metrics.jsonl").read_text() == "{}\n{}\n"
    # into a folder of the copy (the chosen trial's snapshots, for an export): no second marker
    assert store.download(store.join(uri, "beta=1_x"), dest / "beta=1_x", ["result.json"]) == 1
    assert not (dest / "beta=1_x" / store.SOURCE_FILE).exists()
    local = tmp_path / "results" / "mine"
    (local / "beta=1_y").mkdir(parents=True)
    (local / "beta=1_y" / "metrics.jsonl").write_text("a local sweep\n")
    with pytest.raises(AlliterError, match="exists and is not a copy of"):
        store.download(uri, local, ["metrics.jsonl"])
    assert (local / "beta=1_y" / "metrics.jsonl").read_text() == "a local sweep\n"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1, in a session of its own, stopped by its process id."""
    pytest.importorskip("moto")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        kill_session(server.pid)
        server.wait()


def bucket_files(fs, path: str) -> list[str]:
    """Every object under a path of the bucket, relative to it."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pyarrow.fs.FileType.File)


def read(fs, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def run_until(args: list[str], env: dict, done, timeout: float = 240) -> None:
    """Start the sweep's driver and kill it (with the Ray it started) once done() is true, as a lost head
    node would; the sweep must not have finished by then."""
    log = tempfile.TemporaryFile("w+")
    driver = subprocess.Popen([*SWEEP, *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not done():
            assert driver.poll() is None, f"the driver ended first: {log.seek(0) or log.read()[-3000:]}"
            assert time.time() < deadline, "timed out"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


@pytest.mark.slow
def test_sweep_in_s3_resumes_after_its_driver_is_killed_and_is_analysed_from_the_bucket(s3_server, tmp_path, monkeypatch,
                                                                                         tiny_gpt_neo):
    import pyarrow.fs

    endpoint = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_server}"}
    for key, value in {**S3_ENV, **endpoint}.items():
        monkeypatch.setenv(key, value)
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    storage = f"s3://{BUCKET}/alliter-results"  # as a user with real S3 writes it
    env = {**os.environ}
    # One trial at a time (--concurrency 1), a checkpoint every 2 groups. Where the kill falls matters: Tune keeps
    # 2 checkpoints and uploads its state every 2nd checkpoint, deleting the oldest first, so a driver killed during
    # that upload leaves a state naming a deleted checkpoint, and that trial cannot resume (docs/cluster.md,
    # troubleshooting). The kill below comes at the first trial's first or second checkpoint, 3 checkpoints before
    # such a moment.
    args = ["--betas", "0,10", "--max-generations", "60", "--checkpoint-every", "2", "--snapshot-every", "20",
            "--eval-samples", "10", "--model", str(tiny_gpt_neo), *ONE_AT_A_TIME]
    root = f"{BUCKET}/alliter-results"

    def sweep_path() -> str | None:
        found = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))]
        return found[0] if found else None

    def a_checkpoint() -> bool:
        path = sweep_path()
        files = bucket_files(fs, path) if path else []
        return any(f.endswith("/checkpoint.pt") for f in files) and any(f.startswith("experiment_state-") for f in files)

    # 1. no --name: the driver is killed once the first trial has a checkpoint in the bucket
    run_until([*args, "--storage", storage], env, a_checkpoint)
    name = sweep_path().rsplit("/", 1)[1]
    # --resume --name reads the bucket: a wrong name is one line, the right one a sweep to resume
    assert "holds no Tune sweep to resume" in sweep_main("--resume", "--name", "nope", "--storage", storage).stderr
    assert tune_trials(store.join(storage, name)) and newest_sweep(storage, resumable=True) == name
    # 2. --resume without --name finds the sweep in the bucket (the newest) and finishes it; the endpoint is
    # in pyarrow's query options this time, not in the environment
    env.pop("AWS_ENDPOINT_URL")
    query_storage = f"s3://{BUCKET}/alliter-results?endpoint_override=127.0.0.1:{s3_server}&scheme=http"
    res = sweep("--storage", query_storage, "--resume", env=env)  # one at a time still: Tune's saved config
    assert res.returncode == 0, res.stderr[-3000:]
    assert any(line.startswith(f"results: s3://{BUCKET}/alliter-results/{name}?endpoint_override=")
               for line in unfolded(res.stdout))

    exp = f"{root}/{name}"
    files = bucket_files(fs, exp)
    trials = sorted({f.split("/")[0] for f in files if f.startswith("beta=")})
    assert [t.split("_")[0] for t in trials] == ["beta=0", "beta=10"]
    states = [json.loads(read(fs, f"{exp}/{f}")) for f in files if f.startswith("experiment_state-")]
    assert states
    statuses = {json.loads(t)["config"]["beta"]: json.loads(t)["status"] for t, _ in states[-1]["trial_data"]}
    assert statuses == {0.0: "TERMINATED", 10.0: "TERMINATED"}, res.stdout[-3000:] + res.stderr[-3000:]
    for trial in trials:
        mine = [f[len(trial) + 1:] for f in files if f.startswith(trial + "/")]
        assert {"metrics.jsonl", "generations.jsonl", "config.json", "node.json", "result.json"} <= set(mine)
        assert any(f.startswith("events.out.tfevents.") for f in mine)
        checkpoints = {f.split("/")[0] for f in mine if f.endswith("/checkpoint.pt")}
        assert 1 <= len(checkpoints) <= 2  # Tune keeps the newest two
        generations = [json.loads(line)["generation"] for line in read(fs, f"{exp}/{trial}/generations.jsonl").splitlines()]
        assert generations == list(range(60))  # every generation exactly once, across the kill
        assert sorted(f for f in mine if f.endswith(".safetensors")) == [
            f"snapshots/generations={g:06d}.safetensors" for g in (20, 40, 60)]
    print(f"{len(files)} objects in s3://{exp}: " + ", ".join(sorted({f.split('/')[-1] for f in files})))

    # 4. the analysis from the bucket's URI (in this process: its imports are loaded); the report is written here
    from alliter.analyse.command import main as best_beta

    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = best_beta([f"s3://{exp}", "--json"])
    assert code == 0, err.getvalue()[-3000:]
    choice = json.loads(out.getvalue())
    assert sorted(r["beta"] for r in choice["betas"]) == [0.0, 10.0]
    copy = tmp_path / "results" / name
    assert (copy / "analysis" / "report.md").stat().st_size > 0 and (copy / "analysis" / "summary.csv").exists()
    assert not list(copy.rglob("checkpoint.pt"))  # the analysis copies what it reads, not the checkpoints
    assert f"to {Path('results') / name}" in err.getvalue()
    print(f"best_beta wrote {sorted(p.name for p in (copy / 'analysis').iterdir())} to {copy / 'analysis'}")


def test_a_bucket_that_does_not_exist_is_one_line(s3_server, monkeypatch):
    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_server}"}.items():
        monkeypatch.setenv(key, value)
    res = sweep_main("--betas", "1", "--storage", "s3://no-such-bucket/results")
    assert res.returncode == 2
    assert "the bucket 'no-such-bucket' does not exist" in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr


@pytest.mark.slow
def test_best_beta_exports_from_a_sweep_uri_with_the_chosen_trials_snapshots_only(tmp_path, bundled_model, monkeypatch):
    from alliter.analyse.command import main as best_beta

    bucket = tmp_path / "bucket" / "sweep"  # any pyarrow URI: file:// here, s3:// in the test above
    for beta in (1, 10):
        run_trial(bucket / f"beta={beta}", bundled_model, beta=beta, generations=20, snapshot_every=10)
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = best_beta([f"file://{bucket}", "--export", "model", "--export-at", "10:20", "--window", "10"])
    assert code == 0, err.getvalue()[-3000:]
    copy = tmp_path / "results" / "sweep"
    assert sorted(p.name for p in (copy / "beta=10" / "snapshots").glob("*.safetensors")) == [
        "generations=000010.safetensors", "generations=000020.safetensors"]
    assert not (copy / "beta=1" / "snapshots").exists()  # the other trial's are left in the bucket
    assert not list(copy.rglob("checkpoint-*.pt"))
    assert (tmp_path / "model" / "config.json").exists() and (copy / "analysis" / "report.md").exists()
