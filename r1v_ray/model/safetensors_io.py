"""Safetensors one tensor at a time: read a tensor (or a flat slice of it) from a checkpoint, and stream
tensors into HF-style shards (`model.safetensors`, or `model-0000i-of-0000n.safetensors` with
`model.safetensors.index.json`) without ever holding a whole model.

Each read opens the file for that tensor only: safetensors maps the file, and pages of a mapping that
stays open count toward the process's resident memory, so a long-lived handle would grow to the file size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3  # HF's former default: shards a user can move around one by one
DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor of a checkpoint lives, and what it is, read from the file's header alone."""

    file: str
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_header(file: str) -> dict:
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def checkpoint_tensors(path: str) -> dict[str, TensorRef]:
    """Every tensor of an HF checkpoint folder (one file or an index of shards), by its saved key."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, SINGLE_FILE)):
        files = [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints load)")
    refs = {}
    for name in files:
        file = os.path.join(path, name)
        for key, info in read_header(file).items():
            if key != "__metadata__":
                refs[key] = TensorRef(file, key, CODE_DTYPES[info["dtype"]], tuple(info["shape"]))
    return refs


def load_tensor(ref: TensorRef, dtype: torch.dtype | None = None) -> torch.Tensor:
    with safe_open(ref.file, framework="pt") as f:
        tensor = f.get_tensor(ref.key)
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


def load_flat_range(ref: TensorRef, start: int, end: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Elements [start, end) of the flattened tensor, reading only the rows that hold them (a view of them)."""
    numel = math.prod(ref.shape)
    if not 0 <= start <= end <= numel:
        raise ValueError(f"{ref.key}: range [{start}, {end}) outside its {numel} elements")
    with safe_open(ref.file, framework="pt") as f:
        if len(ref.shape) == 0:
            part = f.get_tensor(ref.key).reshape(-1)[start:end]
        else:
            row = math.prod(ref.shape[1:]) or 1
            first, last = start // row, -(-end // row)
            part = f.get_slice(ref.key)[first:last].reshape(-1)[start - first * row : end - first * row]
    # a view into the rows read: copy it where it goes (ZeRO-3 partitions), there is no second copy here
    return part if dtype is None or part.dtype == dtype else part.to(dtype)


def _shard_plan(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int) -> list[list[int]]:
    """Greedy split in order, like HF's: a new shard when the next tensor would pass the limit."""
    shards, size = [[]], 0
    for i, (_, dtype, shape) in enumerate(entries):
        nbytes = math.prod(shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


class ShardedWriter:
    """Writes the declared tensors, in any order, each straight to its place in its shard file.

    Headers are written first (shapes and dtypes are declared up front), so a tensor's bytes go to disk
    as soon as it is given and nothing is buffered.
    """

    def __init__(self, out_dir: str, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int):
        if len({name for name, _, _ in entries}) != len(entries):
            raise ValueError("ShardedWriter: tensor names repeat")
        plan = _shard_plan(entries, max_shard_bytes)
        n = len(plan)
        self.files, self.places, self.total = {}, {}, 0
        for k, members in enumerate(plan):
            file = SINGLE_FILE if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            # widest dtypes first keeps every tensor aligned to its element size
            members = sorted(members, key=lambda i: (-entries[i][1].itemsize, i))
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for i in members:
                name, dtype, shape = entries[i]
                nbytes = math.prod(shape) * dtype.itemsize
                header[name] = {
                    "dtype": DTYPE_CODES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                self.places[name] = (file, offset, dtype, tuple(shape))
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            handle = open(os.path.join(out_dir, file), "wb")
            handle.write(len(raw).to_bytes(8, "little") + raw)
            handle.truncate(8 + len(raw) + offset)
            self.files[file] = (handle, 8 + len(raw))
            self.total += offset
        self.sharded, self.pending = n > 1, set(self.places)
        self.out_dir = out_dir

    def write(self, name: str, tensor: torch.Tensor) -> None:
        file, offset, dtype, shape = self.places[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: declared {dtype} {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        handle, data_start = self.files[file]
        handle.seek(data_start + offset)
        handle.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self.pending.discard(name)

    def close(self, check: bool = True) -> list[str]:
        """The files written; refuses when a declared tensor never came."""
        for handle, _ in self.files.values():
            handle.close()
        if not check:
            return []
        if self.pending:
            raise RuntimeError(
                f"checkpoint incomplete: {len(self.pending)} tensors never written, e.g. {sorted(self.pending)[:3]}"
            )
        if self.sharded:
            index = {
                "metadata": {"total_size": self.total},
                "weight_map": {name: place[0] for name, place in sorted(self.places.items())},
            }
            with open(os.path.join(self.out_dir, INDEX_FILE), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
        return sorted(self.files)
