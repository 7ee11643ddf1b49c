"""The shared learner engine under ZeRO-3: two gloo ranks each hold about half of the model's parameters
once it is loaded (created sharded, each rank reading its own slices), never all of it, without a byte of
weights going between them (no broadcast of fresh parameters, no gather to random-init them), and the HF
export, gathered one parameter at a time, streams the whole model into safetensors shards with HF's index."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from r1v_ray.model.assemble import checkpoint_complete, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _rank(rank: int, world: int, port: int, checkpoint: str, out: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    import torch.distributed as dist

    from r1v_ray.engines.learner import LearnerEngine

    dist.init_process_group("gloo", rank=rank, world_size=world)
    import deepspeed.comm

    deepspeed.comm.configure(enabled=True, prof_all=True)  # DeepSpeed's log of its collectives, by size
    engine = LearnerEngine(
        checkpoint, ["projector"], zero_stage=3, use_gpu=False, dtype="float32", device="cpu", world=world
    )
    logged = deepspeed.comm.comms_logger.comms_dict
    moved = {op: sum(size * rec[0] for size, rec in sizes.items()) for op, sizes in logged.items()}
    deepspeed.comm.configure(enabled=False)
    params = list(engine.model.parameters())
    held = sum(p.numel() for p in params)  # this rank's partitions
    full = sum(p.ds_numel for p in params)
    engine.start(torch.optim.AdamW(engine.trainable_parameters(), lr=1e-3))
    engine.export_hf(out, rank, {"stage": "test"}, max_shard_bytes=256 * 1024)  # several shards
    results[rank] = (held, full, {op: n for op, n in moved.items() if n})
    dist.destroy_process_group()


def test_zero3_ranks_hold_their_shards_only_and_export_the_whole_model(tiny_checkpoint, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    out = str(tmp_path / "hf")
    mp.spawn(_rank, args=(2, port, tiny_checkpoint, out, results), nprocs=2, join=True)
    full = results[0][1]
    for rank in (0, 1):
        held, total, moved = results[rank]
        assert total == full and held <= 0.55 * full, (rank, held, full)  # about half each, never all
        assert not moved, (rank, moved)  # bytes by collective while loading: each rank reads its own slices
    before = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    after = {k: v for shard in shards for k, v in load_file(os.path.join(out, shard)).items()}
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert checkpoint_complete(out)
    model, processor = load_checkpoint(out)  # transformers reads the sharded export as any HF checkpoint
    assert torch.equal(model.lm_head.weight, before["language_model.lm_head.weight"])
    assert processor.tokenizer.context_image_token_id == model.config.image_token_id
