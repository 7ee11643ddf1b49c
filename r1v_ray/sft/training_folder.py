"""One SFT training run in a stage's folder: the selection streamed through the length filter into
`name/data`, Ray Train (`sft.ray_train.run_sft`), the HF checkpoint at `name/model` and a summary.

A finished run (its `model/` and summary) is never redone; an unfinished one resumes from its Ray Train
checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import AutoProcessor

from r1v_ray import store
from r1v_ray.atomic import write_json_atomic
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import count_rows, remove
from r1v_ray.data.select import Selection
from r1v_ray.model.assemble import checkpoint_complete
from r1v_ray.run_dir import TRAIN_DATA, TRAIN_MODEL, TRAIN_REJECTED, TRAIN_SUMMARY
from r1v_ray.sft.data import filter_by_length
from r1v_ray.sft.ray_train import run_sft
from r1v_ray.sft.trainer import SFTJob

if TYPE_CHECKING:
    from r1v_ray.stages.manifest import StageRun


def model_done(path: str) -> bool:
    return checkpoint_complete(path)  # config.json is written before the weights: not proof enough


def train(
    cfg: R1VConfig,
    run: StageRun,
    name: str,
    init: str,
    selection: Selection,
    lr: float,
    prefixes: list[str],
    epochs: int = 1,
) -> dict:
    """One SFT run under `run.dir/name`: the selection streamed through the length filter into `name/data`,
    Ray Train, HF checkpoint at `name/model`. An empty training set stops here, before any worker starts."""
    out = run.path_for(name)
    final = store.join(out, TRAIN_MODEL)
    summary_path = store.join(out, TRAIN_SUMMARY)
    if model_done(final) and store.is_file(summary_path):
        return store.read_json(summary_path)
    processor = AutoProcessor.from_pretrained(store.stage_in(init))
    data, rejected = store.join(out, TRAIN_DATA), store.join(out, TRAIN_REJECTED)

    def write_data(target: str) -> None:
        remove(rejected)  # a crashed attempt's parts
        filter_by_length(selection, processor, cfg.sft.max_length, target, rejected, stage=f"{run.stage}/{name}")

    store.write_dir_once(data, write_data)  # `data` is complete only once the filter has written all of it
    n_rows, too_long = count_rows(data), count_rows(rejected)
    if n_rows == 0:
        raise ValueError(
            f"{run.stage}/{name}: no training rows: {selection.description} of {selection.uri} keeps none "
            f"({too_long} selected rows are longer than sft.max_length={cfg.sft.max_length}, see {rejected}); "
            "widen the selection (sft.taus, sft.mlp_init_stages sources / min_score) or raise sft.max_length"
        )
    job = SFTJob(
        init_checkpoint=init,
        data_uri=data,
        output_dir=out,
        learning_rate=lr,
        sft=cfg.sft,
        stage=f"{run.stage}/{name}",
        epochs=epochs,
        dtype=cfg.model.dtype if cfg.sft.use_gpu else "float32",
        trainable_prefixes=prefixes,
    )
    run_sft(job)
    summary = {
        "model": final,
        "rows": n_rows,
        "rows_in": n_rows + too_long,
        "learning_rate": lr,
        "init": init,
        "trainable_prefixes": prefixes,
    }
    write_json_atomic(summary_path, summary, indent=2)
    return summary


def publish(src: str, dst: str) -> None:
    store.copy_tree(src, dst)  # whole, or (a crash) without its config.json: redone
