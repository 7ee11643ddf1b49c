"""SFT training runs in a stage's folder: each run's selection streamed through the length filter into
`name/data`, Ray Train (`sft.ray_train.run_sft`), the HF checkpoint at `name/model` and a summary. Runs that
train one after the other (MLP initialization's sub-stages) share one Ray Train run (`train_chain`).

A finished run (its `model/` and summary) is never redone; an unfinished one resumes from its Ray Train
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class TrainingRun:
    """One SFT run of a chain: its folder `name` in the stage, what it starts from and trains on."""

    name: str
    init: str
    selection: Selection
    lr: float
    prefixes: list[str]
    epochs: int = 1


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
    """One SFT run under `run.dir/name` (`train_chain` of one run)."""
    return train_chain(cfg, run, [TrainingRun(name, init, selection, lr, prefixes, epochs)])[0]


def train_chain(cfg: R1VConfig, run: StageRun, runs: list[TrainingRun]) -> list[dict]:
    """SFT runs that each start from the one before's model (`runs[k].init` is `runs[k-1]`'s `name/model`),
    in one Ray Train run: one worker group start for all of them. Each run's selection is streamed through
    the length filter into `name/data` first; an empty training set stops here, before any worker starts.
    A chain trains one model, so every run's data is tokenized with the first run's processor."""
    outs = [run.path_for(r.name) for r in runs]
    summaries = [store.join(out, TRAIN_SUMMARY) for out in outs]
    if all(model_done(store.join(out, TRAIN_MODEL)) and store.is_file(p) for out, p in zip(outs, summaries)):
        return [store.read_json(p) for p in summaries]
    processor = AutoProcessor.from_pretrained(store.stage_in(runs[0].init))
    counts = [_write_data(cfg, run, r, out, processor) for r, out in zip(runs, outs)]
    jobs = [
        SFTJob(
            init_checkpoint=r.init,
            data_uri=store.join(out, TRAIN_DATA),
            output_dir=out,
            learning_rate=r.lr,
            sft=cfg.sft,
            stage=f"{run.stage}/{r.name}",
            epochs=r.epochs,
            dtype=cfg.model.dtype if cfg.sft.use_gpu else "float32",
            trainable_prefixes=r.prefixes,
        )
        for r, out in zip(runs, outs)
    ]
    run_sft(jobs)
    done = []
    for r, out, path, (n_rows, too_long) in zip(runs, outs, summaries, counts):
        summary = {
            "model": store.join(out, TRAIN_MODEL),
            "rows": n_rows,
            "rows_in": n_rows + too_long,
            "learning_rate": r.lr,
            "init": r.init,
            "trainable_prefixes": r.prefixes,
        }
        write_json_atomic(path, summary, indent=2)
        done.append(summary)
    return done


def _write_data(cfg: R1VConfig, run: StageRun, r: TrainingRun, out: str, processor) -> tuple[int, int]:
    """The run's selection through the length filter into `out/data` (once); (rows kept, rows too long)."""
    data, rejected = store.join(out, TRAIN_DATA), store.join(out, TRAIN_REJECTED)

    def write_data(target: str) -> None:
        remove(rejected)  # a crashed attempt's parts
        filter_by_length(r.selection, processor, cfg.sft.max_length, target, rejected, stage=f"{run.stage}/{r.name}")

    store.write_dir_once(data, write_data)  # `data` is complete only once the filter has written all of it
    n_rows, too_long = count_rows(data), count_rows(rejected)
    if n_rows == 0:
        raise ValueError(
            f"{run.stage}/{r.name}: no training rows: {r.selection.description} of {r.selection.uri} keeps none "
            f"({too_long} selected rows are longer than sft.max_length={cfg.sft.max_length}, see {rejected}); "
            "widen the selection (sft.taus, sft.mlp_init_stages sources / min_score) or raise sft.max_length"
        )
    return n_rows, too_long


def publish(src: str, dst: str) -> None:
    store.copy_tree(src, dst)  # whole, or (a crash) without its config.json: redone
