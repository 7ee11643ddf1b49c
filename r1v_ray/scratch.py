"""Room in a node's scratch folder for one more staged checkpoint.

`store.stage_in` keeps a copy of each remote checkpoint it fetched (a 38B checkpoint is ~76 GB) and reuses
it while the remote listing is unchanged. When the disk lacks room for the next copy, the least recently
used copies go first; one used within `KEEP_RECENT_S` is never removed (an engine on this node may be
loading it), nor one another process is staging (its lock is held). If that frees too little, staging
stops with an error naming the folder, before the copy fills the disk.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time

from r1v_ray.store import STAGED

KEEP_RECENT_S = 3600
HEADROOM = 1.05  # the copy plus 5%: filesystem overhead and the metadata written beside it


def staged_copies(root: str) -> list[tuple[float, str]]:
    """(last use, folder) of every staged copy under `root`/staged, least recently used first."""
    found = []
    for folder, _, files in os.walk(os.path.join(root, "staged")):
        if STAGED in files:
            found.append((os.path.getmtime(os.path.join(folder, STAGED)), folder))
    return sorted(found)


def _evict(folder: str) -> bool:
    """Remove a staged copy unless someone is staging it right now."""
    with open(folder + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def make_room(root: str, needed: int, target: str) -> list[str]:
    """Free `needed` bytes (with headroom) under `root` for a copy at `target`; returns the copies removed."""
    os.makedirs(root, exist_ok=True)
    want = int(needed * HEADROOM)
    removed = []
    for used, folder in staged_copies(root):
        if shutil.disk_usage(root).free >= want:
            return removed
        if folder != target and time.time() - used > KEEP_RECENT_S and _evict(folder):
            removed.append(folder)
    free = shutil.disk_usage(root).free
    if free < want:
        raise OSError(
            f"scratch folder {root} has {free / 1e9:.1f} GB free, staging {target} needs {want / 1e9:.1f} GB "
            f"(copies used in the last {KEEP_RECENT_S // 60} min are kept): point $R1V_SCRATCH_DIR or scratch_dir "
            "at a larger disk"
        )
    return removed
