"""Where sweeps live: a local folder, or a URI such as s3://bucket/prefix, read through pyarrow's filesystems.

Ray Tune resolves `--storage` with `pyarrow.fs.FileSystem.from_uri`, and so does this module, so a URI
means the same thing to both: `s3://bucket/prefix` uses the AWS credentials and region of the
environment (and the endpoint in AWS_ENDPOINT_URL, for an S3-compatible server), and pyarrow's query
options (`s3://bucket/prefix?endpoint_override=host:port&scheme=http`) stay at the end of every path
made from it.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path
from typing import Iterable

from alliter.config import AlliterError

EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Tune's record of a sweep, in the sweep's folder
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


def _sweep_states(fs, path: str) -> list:
    """FileInfos of Tune's experiment_state files directly in a sweep folder."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return [i for i in infos if i.type == pyarrow.fs.FileType.File and Path(i.base_name).match(EXPERIMENT_STATE_GLOB)]


def is_sweep(exp_path: str) -> bool:
    """Whether a folder or URI holds a Tune sweep (one that --resume can continue)."""
    fs, path = filesystem(exp_path)
    try:
        return bool(_sweep_states(fs, path))
    except OSError as err:
        raise AlliterError(f"cannot read {exp_path}: {_first_line(err)}") from None


def exists(exp_path: str) -> bool:
    """Whether anything is at a folder or URI (an S3 'folder' exists while it holds an object)."""
    import pyarrow.fs

    fs, path = filesystem(exp_path)
    try:
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except OSError as err:
        raise AlliterError(f"cannot read {exp_path}: {_first_line(err)}") from None


def newest_sweep(storage: str) -> str | None:
    """The name of the sweep under storage whose Tune state was written last, or None."""
    import pyarrow.fs

    fs, root = filesystem(storage)
    try:
        folders = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                   if i.type == pyarrow.fs.FileType.Directory]
        newest = {}
        for folder in folders:
            times = [s.mtime for s in _sweep_states(fs, folder.path) if s.mtime is not None]
            if times:
                newest[folder.base_name] = max(times)
    except OSError as err:
        raise AlliterError(f"cannot list the sweeps under {storage}: {_first_line(err)}") from None
    return max(newest, key=newest.get) if newest else None


def check_writable(storage: str) -> None:
    """Fail now, in one line, where the sweep could not write its results (before Ray starts).

    A folder: the nearest existing one on its path must be a folder we can create folders in (tried
    with an empty folder of our own, removed at once). A URI: pyarrow must accept it and its bucket
    must exist (the credentials are tried by that look-up)."""
    import pyarrow.fs

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
    fs, path = filesystem(storage)
    bucket = path.split("/", 1)[0]
    if isinstance(fs, pyarrow.fs.LocalFileSystem) or not bucket:
        return
    try:
        found = fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
    except OSError as err:
        raise AlliterError(f"--storage {storage}: {_first_line(err)}") from None
    if not found:
        raise AlliterError(f"--storage {storage}: the bucket {bucket!r} does not exist (create it first)")


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
