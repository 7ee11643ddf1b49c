"""Append-only logs (metrics.jsonl, samples_seen.jsonl, resumes.jsonl) on any store.

A local log is a file appended in place. Object stores cannot append, and rewriting one object with each
record added makes a run's uploads grow with the square of its length; so a remote log is a chain of
segment objects, `<name>` then `<name>.seg-000001`, ..., and an append rewrites only the last segment,
starting a new one once it holds `SEGMENT_BYTES`. Readers get the segments concatenated in order. One
process writes a log (a stage's driver, a trainer's rank 0); it keeps its last segment in memory and checks
only its size before the put (a forced re-run may have removed the log), so an append is a head and one
put of at most a segment. A rewrite (a resumed run dropping records it will redo) starts a
new segment that begins with `_REWRITTEN`: readers skip everything before it, so the put that writes it is
the rewrite; the older segments are deleted after (the first one emptied, so the log keeps its name).
"""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from r1v_ray import store
from r1v_ray.data.io import resolve_fs

SEGMENT_BYTES = 256 * 1024
_SEGMENT = ".seg-"
_REWRITTEN = '{"_log_rewritten": true}\n'
_tails: dict[str, tuple[int, bytes]] = {}  # log URI -> (index of its last segment, that segment's bytes)


def _segment_uri(uri: str, index: int) -> str:
    return uri if index == 0 else f"{uri}{_SEGMENT}{index:06d}"


def _segments(uri: str) -> list[int]:
    """Indexes of the log's segment objects, in order (none when the log does not exist)."""
    fs, path = resolve_fs(uri)
    parent, name = posixpath.split(path)
    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    found = []
    for info in infos:
        base = posixpath.basename(info.path)
        if info.type != pafs.FileType.File:
            continue
        if base == name:
            found.append(0)
        elif base.startswith(name + _SEGMENT) and base[len(name + _SEGMENT) :].isdigit():
            found.append(int(base[len(name + _SEGMENT) :]))
    return sorted(found)


def append(uri: str, text: str) -> None:
    """Add `text` at the log's end."""
    if not store.is_remote(uri):
        store.append_local(uri, text)
        return
    index, tail = _tails.get(uri, (0, None))
    if tail is None or store.size(_segment_uri(uri, index)) != len(tail):  # first append here, or the log changed
        indexes = _segments(uri)
        index = indexes[-1] if indexes else 0
        tail = store.read_bytes(_segment_uri(uri, index)) if indexes else b""
    data = text.encode()
    if tail and len(tail) + len(data) > SEGMENT_BYTES:
        index, tail = index + 1, b""
    store.write_bytes(_segment_uri(uri, index), tail + data)
    _tails[uri] = (index, tail + data)


def read(uri: str) -> str:
    """The whole log ("" when it does not exist)."""
    if not store.is_remote(uri):
        return store.read_text(uri) if store.is_file(uri) else ""
    texts = [store.read_text(_segment_uri(uri, i)) for i in _segments(uri)]
    for i in range(len(texts) - 1, -1, -1):
        if texts[i].startswith(_REWRITTEN):
            return "".join([texts[i][len(_REWRITTEN) :], *texts[i + 1 :]])
    return "".join(texts)


def rewrite(uri: str, text: str) -> None:
    """Replace the whole log with `text`: readers see the old log or the new one, never a mix."""
    if not store.is_remote(uri):
        store.write_text(uri, text)
        return
    _tails.pop(uri, None)
    old = _segments(uri)
    if not old:
        store.write_text(uri, text)
        return
    store.write_bytes(_segment_uri(uri, old[-1] + 1), (_REWRITTEN + text).encode())
    for i in old[1:]:  # now unread; a crash here leaves them behind, still skipped
        store.remove(_segment_uri(uri, i))
    store.write_text(uri, "")  # the log keeps its own name (finders look for it), empty
