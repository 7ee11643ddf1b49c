"""Files of the run directory on any pyarrow filesystem: local paths, `s3://`, `gs://`, `hdfs://`, and every
URI fsspec resolves (`data.io.resolve_fs`). Every read and write of the run directory goes through here.

Writes are atomic where the store allows: a local file is written to a temporary sibling and renamed; an
object store publishes an object only once its upload completes (one put per file), so remote files are
written directly. Object stores cannot append: logs are segmented (`r1v_ray.append_log`).
A folder is published with the files that vouch for it (`config.json`, an index) written last, after any
old copy is removed, so a reader that finds those files finds the whole folder.

Engines that need local files (vLLM, transformers, DeepSpeed) get them through `stage_in`: a remote folder
is copied once into the node's scratch folder (`run_dir.scratch_root`) and reused while its listing is
unchanged; what they write goes to a local folder that `publish_dir` / `upload_dir` copy up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow.fs as pafs

from r1v_ray.data.io import resolve_fs

COMPLETE = "_COMPLETE"  # in a remote folder written by `write_dir_once`: the folder is whole (readers skip "_" files)
STAGED = ".r1v_staged.json"  # in a staged copy: the remote listing (sizes, times) it was copied from
VOUCHERS = ("model.safetensors.index.json", "config.json")  # written last: a checkpoint with them is whole


def is_remote(uri: str) -> bool:
    """True for an object store or any non-local filesystem URI (`file://` is local)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def join(root: str, *parts: str) -> str:
    if not is_remote(root):
        return os.path.join(local_path(root), *parts)
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts if p]])


def dirname(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if is_remote(uri) else os.path.dirname(local_path(uri))


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def _info(uri: str) -> pafs.FileInfo:
    fs, path = resolve_fs(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.File


def size(uri: str) -> int:
    return _info(uri).size


def read_bytes(uri: str) -> bytes:
    fs, path = resolve_fs(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


_MISSING = object()


def read_json(uri: str, default: Any = _MISSING) -> Any:
    """The JSON value at `uri`; `default` when there is no such file (else FileNotFoundError)."""
    if default is not _MISSING and not is_file(uri):
        return default
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """`data` into `uri`: readers see the old file, or the new one whole."""
    if not is_remote(uri):
        path = local_path(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, path = resolve_fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:  # one object, visible once the upload completes
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def write_json(uri: str, value: Any, **dump_kwargs: Any) -> None:
    write_text(uri, json.dumps(value, **dump_kwargs))


def append_local(path: str, text: str) -> None:
    """Append to a local file (remote logs: `r1v_ray.append_log`)."""
    path = local_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


def makedirs(uri: str) -> None:
    fs, path = resolve_fs(uri)
    fs.create_dir(path, recursive=True)


def remove(uri: str) -> None:
    """Delete a file or a folder (and all below it) if it exists."""
    fs, path = resolve_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def listdir(uri: str) -> list[str]:
    """Names of the files and folders directly in `uri` (sorted; none when it does not exist)."""
    fs, path = resolve_fs(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def _listing(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    """{relative path: size} of every file under `path`."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    root = path.rstrip("/") + "/"
    return {i.path[len(root) :]: i.size for i in infos if i.type == pafs.FileType.File}


def _stamps(fs: pafs.FileSystem, path: str) -> dict[str, list]:
    """{relative path: [size, modification time]} of every file under `path`: a folder republished at the
    same place (a forced re-run) has new times even where the sizes match."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    root = path.rstrip("/") + "/"
    return {
        i.path[len(root) :]: [i.size, i.mtime_ns if i.mtime is not None else None]
        for i in infos
        if i.type == pafs.FileType.File
    }


def listing(uri: str) -> dict[str, int]:
    fs, path = resolve_fs(uri)
    return _listing(fs, path)


def find(uri: str, name: str) -> list[str]:
    """Every file called `name` under `uri`, as URIs (sorted)."""
    return sorted(join(uri, rel) for rel in listing(uri) if posixpath.basename(rel) == name)


def dir_complete(uri: str) -> bool:
    """A folder `write_dir_once` finished: renamed into place locally, its `_COMPLETE` marker remotely."""
    return is_file(join(uri, COMPLETE)) if is_remote(uri) else os.path.isdir(local_path(uri))


def write_dir_once(uri: str, write: Callable[[str], object]) -> bool:
    """`write(folder)` fills the folder `uri` unless it is complete already; returns whether it ran.

    The folder appears complete only once `write` returned: locally it is written as `uri.partial` and
    renamed; on an object store (no rename) it is written in place and marked `_COMPLETE` last, and a
    half-written one is removed first.
    """
    if dir_complete(uri):
        return False
    if not is_remote(uri):
        path = local_path(uri)
        remove(path + ".partial")
        write(path + ".partial")
        os.replace(path + ".partial", path)
        return True
    remove(uri)
    write(uri)
    write_text(join(uri, COMPLETE), "")
    return True


def _vouchers_last(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda rel: (posixpath.basename(rel) in VOUCHERS, rel))


def copy_tree_fs(src_fs: pafs.FileSystem, src: str, dst_uri: str, replace: bool = True) -> None:
    """Every file under `src` (on `src_fs`) to the folder `dst_uri`; checkpoint vouchers last.

    `replace` removes what `dst_uri` held first (so a crash leaves a folder without its vouchers, never
    a mix of old and new files); else files are added (several ranks filling one folder).
    """
    dst_fs, dst = resolve_fs(dst_uri)
    if replace:
        remove(dst_uri)
    dst_fs.create_dir(dst, recursive=True)
    for rel in _vouchers_last(_listing(src_fs, src)):
        target = f"{dst}/{rel}"
        parent = posixpath.dirname(target)
        if parent != dst:
            dst_fs.create_dir(parent, recursive=True)
        pafs.copy_files(f"{src}/{rel}", target, source_filesystem=src_fs, destination_filesystem=dst_fs)


def publish_from(src_fs: pafs.FileSystem, src: str, dst_uri: str) -> None:
    """The folder `src` of `src_fs` becomes `dst_uri` (replacing it), whole: renamed into place locally,
    vouchers last remotely."""
    if not is_remote(dst_uri):
        from r1v_ray.atomic import atomic_dir

        with atomic_dir(local_path(dst_uri)) as tmp:
            copy_tree_fs(src_fs, src, tmp, replace=False)
        return
    copy_tree_fs(src_fs, src, dst_uri)


def copy_tree(src_uri: str, dst_uri: str, replace: bool = True) -> None:
    fs, path = resolve_fs(src_uri)
    if replace:
        publish_from(fs, path, dst_uri)
    else:
        copy_tree_fs(fs, path, dst_uri, replace=False)


def publish_dir(local_dir: str, uri: str) -> str:
    """The folder `local_dir` becomes `uri` (replacing it), whole: by rename locally, vouchers last remotely."""
    if not is_remote(uri):
        if os.path.abspath(local_dir) != os.path.abspath(local_path(uri)):
            copy_tree(local_dir, uri)
        return uri
    copy_tree_fs(pafs.LocalFileSystem(), os.path.abspath(local_dir), uri)
    return uri


def upload_dir(local_dir: str, uri: str) -> None:
    """Add `local_dir`'s files to the folder `uri` (nothing is removed): each rank uploads its own files."""
    if not is_remote(uri) and os.path.abspath(local_dir) == os.path.abspath(local_path(uri)):
        return
    copy_tree_fs(pafs.LocalFileSystem(), os.path.abspath(local_dir), uri, replace=False)


def _slug(uri: str) -> str:
    scheme, rest = uri.split("://", 1)
    return os.path.join(scheme, *[p for p in rest.split("/") if p not in ("", ".", "..")])


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """One process at a time per staged folder (two engines on one node staging the same checkpoint)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stage_in(uri: str, scratch: str | None = None) -> str:
    """A local folder holding `uri`'s files: `uri` itself when local, else a copy in the node's scratch
    folder. A copy already there whose recorded listing (names, sizes, times) still matches is not fetched again;
    old copies make room when the disk is short (`r1v_ray.scratch`)."""
    if not is_remote(uri):
        return local_path(uri)
    from r1v_ray.run_dir import scratch_root
    from r1v_ray.scratch import make_room

    target = os.path.join(scratch_root(scratch), "staged", _slug(uri))
    fs, path = resolve_fs(uri)
    remote = _stamps(fs, path)
    if not remote:
        raise FileNotFoundError(f"nothing to stage at {uri}")
    with _locked(target):
        record = os.path.join(target, STAGED)
        if os.path.isfile(record):
            with open(record) as f:
                if json.load(f) == remote:
                    os.utime(record)  # used now: the last copy eviction would take
                    return target
        partial = target + ".partial"
        for stale in (target, partial):  # the remote files changed, or a copy was cut short
            shutil.rmtree(stale, ignore_errors=True)
        make_room(scratch_root(scratch), sum(size for size, _ in remote.values()), target)
        copy_tree_fs(fs, path, partial, replace=False)
        with open(os.path.join(partial, STAGED), "w") as f:
            json.dump(remote, f)
        os.replace(partial, target)
    return target


@contextlib.contextmanager
def writing_dir(uri: str, scratch: str | None = None, replace: bool = True) -> Iterator[str]:
    """A local folder to write `uri`'s files into; on success they become `uri` (`replace`: the whole
    folder, published; else added to it). Local: an atomic temporary sibling (or `uri` itself when adding)."""
    if not is_remote(uri):
        if not replace:
            os.makedirs(local_path(uri), exist_ok=True)
            yield local_path(uri)
            return
        from r1v_ray.atomic import atomic_dir

        with atomic_dir(local_path(uri)) as tmp:
            yield tmp
        return
    from r1v_ray.run_dir import scratch_root

    root = os.path.join(scratch_root(scratch), "outgoing")
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root)
    try:
        yield tmp
        publish_dir(tmp, uri) if replace else upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
