"""Writes that a crash cannot leave half done: a file or a folder appears whole or not at all.

Resumable stages treat the presence of a file (`bounds.json`, `done.json`, `eval.json`, a checkpoint's
`config.json`) as "this step finished", so each such file is written to a temporary sibling first and
then renamed over its final name (`os.replace` is atomic on one filesystem). Object stores (URIs with
`://`) already publish an object only once its upload completes, so those are written directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any


def write_text_atomic(path: str, text: str) -> None:
    """`text` into `path` (a local path or a URI); readers see the old file, or the new one whole."""
    from r1v_ray import store  # the store imports atomic_dir from here

    store.write_text(path, text)


def write_json_atomic(path: str, value: Any, **dump_kwargs: Any) -> None:
    write_text_atomic(path, json.dumps(value, **dump_kwargs))


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path`, on failure it is removed.

    A folder that exists at `path` is therefore always complete; replacing an old one removes it first,
    so a crash at that instant leaves no folder (a step to redo), never a mix of old and new files.
    """
    path = os.path.normpath(path)
    tmp = f"{path}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
