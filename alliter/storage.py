"""Where sweeps live, and the one file layer: a local folder, or a URI such as s3://bucket/prefix, read through
pyarrow's filesystems. Every reader and writer of a run folder's files goes through here (their names and records:
alliter.schema); a missing file reads as None.

Ray Tune resolves `--storage` with `pyarrow.fs.FileSystem.from_uri`, and so does this module, so a URI
means the same thing to both: `s3://bucket/prefix` uses the AWS credentials and region of the
environment (and the endpoint in AWS_ENDPOINT_URL, for an S3-compatible server), and pyarrow's query
options (`s3://bucket/prefix?endpoint_override=host:port&scheme=http`) stay at the end of every path
made from it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from alliter.cli import AlliterError

SOURCE_FILE = ".alliter-source"  # in a local copy of a sweep: the URI it was copied from


def is_uri(storage: str | os.PathLike) -> bool:
    return "://" in str(storage)


def storage_root(storage: str) -> str:
    """A folder as an absolute path (every node of a cluster must see the same one), a URI as it is."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(root: str, *names: str) -> str:
    """root/name/...: for a URI, the names go into its path, before its query string."""
    if not is_uri(root):
        return str(Path(root, *names))
    base, sep, query = root.partition("?")
    return "/".join([base.rstrip("/"), *names]) + sep + query


def filesystem(storage: str):
    """(pyarrow filesystem, path on it) for a folder or a URI; a URI pyarrow cannot use is an AlliterError."""
    import pyarrow.fs

    if not is_uri(storage):
        return pyarrow.fs.LocalFileSystem(), str(Path(storage).expanduser().resolve())
    try:
        return pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise AlliterError(f"cannot use storage {storage!r}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def exists(exp_path: str) -> bool:
    """Whether anything is at a folder or URI (an S3 'folder' exists while it holds an object)."""
    import pyarrow.fs

    fs, path = filesystem(exp_path)
    try:
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except OSError as err:
        raise AlliterError(f"cannot read {exp_path}: {_first_line(err)}") from None


def folders(storage: str) -> list[tuple[str, float | None]]:
    """(name, modified time) of the folders directly under a folder or URI ([] where there is none; a bucket's
    "folders" have no time: None)."""
    import pyarrow.fs

    fs, root = filesystem(storage)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError as err:
        raise AlliterError(f"cannot list {storage}: {_first_line(err)}") from None
    return [(i.base_name, _seconds(i.mtime)) for i in infos if i.type == pyarrow.fs.FileType.Directory]


def files(folder: str, pattern: str = "*") -> list[tuple[str, float | None]]:
    """(name, modified time) of the files directly in a folder or URI whose names match a glob pattern, sorted by
    name ([] where there is none)."""
    import pyarrow.fs

    fs, path = filesystem(folder)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError as err:
        raise AlliterError(f"cannot list {folder}: {_first_line(err)}") from None
    return sorted((i.base_name, _seconds(i.mtime)) for i in infos
                  if i.type == pyarrow.fs.FileType.File and fnmatch.fnmatchcase(i.base_name, pattern))


def _seconds(mtime) -> float | None:
    return None if mtime is None else mtime.timestamp()


STORAGE_TIMEOUT_S = 15.0  # a URI's first answer (pyarrow's look-up of a gs:// bucket with no network: minutes)
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")  # pyarrow's filesystems that keep files
# the URI's filesystem and its bucket, in a process of its own: a look-up that hangs is killed, and one that aborts
# the process (Azure's, without credentials) takes only this one with it
PROBE = """
import json, sys
import pyarrow.fs
try:
    fs, path = pyarrow.fs.FileSystem.from_uri(sys.argv[1])
    bucket = path.split("/", 1)[0]
    local = isinstance(fs, pyarrow.fs.LocalFileSystem) or not bucket
    found = local or fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
    print(json.dumps({"found": found, "bucket": bucket}))
except Exception as err:
    print(json.dumps({"error": (str(err).strip().splitlines() or [type(err).__name__])[0][:300]}))
"""


def check_writable(storage: str) -> None:
    """Fail now, in one line, where the sweep could not write its results (before Ray starts).

    A folder: the nearest existing one on its path must be a folder we can create folders in (tried
    with an empty folder of our own, removed at once). A URI: a filesystem that keeps files, which pyarrow
    accepts and whose bucket exists (the credentials are tried by that look-up), answering within
    STORAGE_TIMEOUT_S."""
    if not is_uri(storage):
        path = Path(storage).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise AlliterError(f"--storage {storage}: {existing} is not a folder")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".alliter-probe-", dir=existing))
        except OSError as err:
            raise AlliterError(f"--storage {storage}: cannot write in {existing} ({err.strerror or err})") from None
        return
    check_reachable(storage, "--storage")


def check_reachable(storage: str, flag: str) -> None:
    """A URI names a filesystem that keeps files, which pyarrow accepts and whose bucket exists, answering within
    STORAGE_TIMEOUT_S; AlliterError in one line otherwise."""
    scheme = storage.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise AlliterError(f"{flag} {storage}: {scheme}:// is not a filesystem that keeps the results (alliter "
                           f"takes {', '.join(s + '://' for s in SCHEMES)} or a folder)")
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, storage], capture_output=True, text=True,
                               timeout=STORAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AlliterError(f"{flag} {storage}: no answer within {STORAGE_TIMEOUT_S:g} s (no network, or a wrong "
                           "endpoint, region or credentials?)") from None
    try:
        answer = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        lines = probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"]
        why = next((line.split("what():", 1)[1] for line in lines if "what():" in line), lines[-1]).strip()[:300]
        raise AlliterError(f"{flag} {storage}: its filesystem failed to start ({why})") from None
    if "error" in answer:
        raise AlliterError(f"cannot use storage {storage!r}: {answer['error']}")
    if not answer["found"]:
        raise AlliterError(f"{flag} {storage}: the bucket {answer['bucket']!r} does not exist (create it first)")


def copy_source(dest: Path) -> str | None:
    """The URI that dest, or a folder above it, is a copy of (its SOURCE_FILE), or None."""
    for folder in (dest, *dest.parents):
        marker = folder / SOURCE_FILE
        if marker.is_file():
            source = marker.read_text().strip()
            base, _, query = source.partition("?")
            relative = dest.relative_to(folder).parts
            return "/".join([base.rstrip("/"), *relative]) + ("?" + query if query else "")
    return None


def download(uri: str, dest: Path, names: Iterable[str] = ("*",), skip: Iterable[str] = ("checkpoint_*",)) -> int:
    """Copy the files under a URI whose names match `names`, except those in folders that match `skip` (glob
    patterns both), into dest with their relative paths; returns how many. dest must be new, or a copy of the
    same URI (or a folder inside one), so that a local sweep is never overwritten."""
    import pyarrow.fs

    source = copy_source(dest)
    if dest.exists() and source != uri:
        raise AlliterError(f"{dest} exists and is not a copy of {uri}; move it away, or analyse it directly")
    names, skip = list(names), list(skip)

    def wanted(relative: str) -> bool:
        *folders, name = relative.split("/")
        if any(fnmatch.fnmatchcase(folder, pattern) for folder in folders for pattern in skip):
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in names)

    fs, root = filesystem(uri)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
        files = [i.path[len(root):].lstrip("/") for i in infos if i.type == pyarrow.fs.FileType.File]
        files = [f for f in files if wanted(f)]
        if not files:
            raise AlliterError(f"no files to copy under {uri}")
        dest.mkdir(parents=True, exist_ok=True)
        if source is None:
            (dest / SOURCE_FILE).write_text(uri + "\n")
        for relative in files:
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{root}/{relative}") as src:
                target.write_bytes(src.read())
    except OSError as err:
        raise AlliterError(f"cannot copy {uri}: {_first_line(err)}") from None
    return len(files)


# --- files on a folder or a bucket ---------------------------------------------------------------------------
# A path is a str (a folder's path or a URI) or a local Path; a local file is read and written straight, without
# pyarrow (the trainer's files, group by group), a URI's through its filesystem.


def read_text(path: str | os.PathLike) -> str | None:
    """A file's text (bytes that are not UTF-8 read as U+FFFD), None when it is not there."""
    if not is_uri(path):
        local = Path(path)
        try:
            return local.read_text(encoding="utf-8", errors="replace") if local.is_file() else None
        except OSError as err:
            raise AlliterError(f"cannot read {path}: {err.strerror or err}") from None
    import pyarrow.fs

    fs, where = filesystem(str(path))
    try:
        if fs.get_file_info(where).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(where) as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError as err:
        raise AlliterError(f"cannot read {path}: {_first_line(err)}") from None


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file's table; None when it is not there, not JSON or not a table."""
    return _table(read_text(path))


def _table(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def json_table(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file's table, None when it is not there; AlliterError in one line when it is there but damaged (a file
    a command cannot go on without: a trial's config, an export's card)."""
    text = read_text(path)
    if text is None:
        return None
    value = _table(text)
    if value is None:
        raise AlliterError(f"{path} is damaged (not a JSON table); restore it, or write it again")
    return value


def read_jsonl(path: str | os.PathLike, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when it is not there). A torn last line (a trial still writing it) is
    skipped; any other line that is not a JSON object is skipped too, and named in `damaged`: a damaged line loses
    that line, not the file."""
    text = read_text(path)
    lines = text.splitlines() if text else []
    rows, bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i != len(lines) - 1 or line.rstrip().endswith("}"):
            bad.append(i + 1)
    if bad and damaged is not None:
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        name = str(path).partition("?")[0].rstrip("/").rpartition("/")[2]
        damaged.append(f"{name}: line{'s' if len(bad) > 1 else ''} {shown} damaged (not JSON); left out")
    return rows


def write_atomic(path: Path, content: str | Callable[[str], None], tmp_dir: Path | None = None) -> None:
    """Write a local file whole or not at all: through a temporary file (in `tmp_dir`, else beside it), renamed.
    `content` is the text, or a function that writes the file at the path it is given."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.tmp"
    try:
        if callable(content):
            content(str(tmp))
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a local JSON-lines file, a line each."""
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small file, its folder made first; on a local folder atomically (a temporary file, renamed)."""
    path = str(path)
    fs, where = filesystem(path)
    try:
        fs.create_dir(where.rpartition("/")[0], recursive=True)
        if not is_uri(path):
            write_atomic(Path(where), text)
            return
        with fs.open_output_stream(where) as f:
            f.write(text.encode("utf-8"))
    except OSError as err:
        raise AlliterError(f"cannot write {path}: {_first_line(err)}") from None


def remove(path: str) -> None:
    fs, where = filesystem(path)
    try:
        fs.delete_file(where)
    except (FileNotFoundError, OSError):
        pass


# --- one driver per sweep ------------------------------------------------------------------------------------

LOCK_FILE = "driver.lock"
LOCK_HEARTBEAT_S = 30.0  # a driver on another machine refreshes its lock this often ...
LOCK_STALE_S = 300.0  # ... and a lock not refreshed for this long is a dead driver's


class DriverLock:
    """The sweep folder's lock: a second driver on a running sweep (a second --resume) is refused. The lock names
    its driver's host and process; a lock whose process is gone (this machine), or that has not been refreshed for
    LOCK_STALE_S (another machine), is a dead driver's and is taken over. On a local folder the lock is created
    exclusively; on a bucket, two drivers starting in the same second can both take it."""

    def __init__(self, exp_path: str, what: str = "sweep"):
        self.exp_path = exp_path
        self.what = what  # what the folder holds: a sweep, or a study (of sweeps)
        self.path = join(exp_path, LOCK_FILE)
        self.created = False  # the lock made the sweep's folder: a sweep that never started leaves none
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def live_holder(self) -> dict[str, Any] | None:
        held = read_json(self.path)
        if not held or (held.get("host"), held.get("pid")) == (self.me["host"], self.me["pid"]):
            return None
        if held.get("host") == self.me["host"]:
            try:
                os.kill(int(held["pid"]), 0)
            except (ProcessLookupError, ValueError, KeyError, TypeError):
                return None
            except PermissionError:
                pass  # another user's live process
            return held
        return held if time.time() - float(held.get("time", 0)) < LOCK_STALE_S else None

    def __enter__(self) -> "DriverLock":
        held = self.live_holder()
        if held is not None:
            raise AlliterError(f"another driver runs this {self.what} (process {held.get('pid')} on "
                               f"{held.get('host')}, {self.path}); wait for it, or stop it first")
        text = json.dumps({**self.me, "time": time.time()})
        if not is_uri(self.path):
            self.created = not Path(self.exp_path).exists()
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:  # a dead driver's: taken over
                write_text(self.path, text)
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
        else:
            write_text(self.path, text)
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)  # for a driver on another machine
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            write_text(self.path, json.dumps({**self.me, "time": time.time()}))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if (read_json(self.path) or {}).get("pid") == self.me["pid"]:
            remove(self.path)
        if self.created and not any(Path(self.exp_path).iterdir()):
            Path(self.exp_path).rmdir()
