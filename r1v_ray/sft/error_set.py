"""The error set E_{t-1} of iterative SFT (paper 2.2): the training rows M_{t-1} answers wrong."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.io import ParquetSink
from r1v_ray.data.schema import REJECTED_SCHEMA, rejected_table
from r1v_ray.data.select import Selection
from r1v_ray.engines.rollout.actor import generate_dataset
from r1v_ray.eval.evaluate import EVAL_COLUMNS, SidePass
from r1v_ray.prompts import paper_request, row_choices
from r1v_ray.rewards import accuracy_reward
from r1v_ray.run_dir import ERROR_IDS


class ErrorSetPass:
    """E's ids by greedy generation over the training rows: those whose Φ(M(x)) != y (paper 2.2). Rides along
    with M's evaluation (`SidePass`), so one engine start serves both, or runs on its own on held rollout
    workers (`generate`), when M's evaluation waits for the engines to be free."""

    def __init__(self, cfg: R1VConfig, train_uri: str):
        self.cfg, self.train_uri = cfg, train_uri
        self.wrong: list[str] = []
        self.rejected: list[dict] = []
        self.generated = 0

    def side_pass(self) -> SidePass:
        return SidePass(self.train_uri, self.build, self.consume)

    def build(self, row: dict):
        return paper_request(row, 1, self.cfg.sft.error_set_max_tokens, 0.0, 1.0, seed=self.cfg.seed)

    def generate(self, model: str, workers: list) -> None:
        """The pass on its own, on running workers that hold `model`."""
        import ray

        ds = ray.data.read_parquet(self.train_uri).select_columns(EVAL_COLUMNS)
        out = generate_dataset(ds, model, self.cfg.rollout, self.build, dtype=self.cfg.model.dtype, workers=workers)
        for row in out.drop_columns(["image"]).iter_rows():
            self.consume(dict(row))

    def consume(self, row: dict) -> None:
        self.generated += 1
        if row["error"] is not None:
            self.rejected.append(
                {"id": str(row["id"]), "stage": "error_set", "reason": row["error"], "row": None, "image": None}
            )
            return
        if accuracy_reward(row["completions"][0], row["answer"], row_choices(row)) == 0.0:
            self.wrong.append(str(row["id"]))

    def save(self, out_dir: str) -> None:
        with ParquetSink(store.join(out_dir, "errors_rejected"), schema=REJECTED_SCHEMA) as sink:
            if self.rejected:
                sink.write(rejected_table(self.rejected))
        scored = self.generated - len(self.rejected)
        record = {
            "generated": self.generated,
            "wrong": len(self.wrong),
            "rejected": len(self.rejected),
            "train_accuracy": 1 - len(self.wrong) / max(1, scored),
            "ids": self.wrong,
        }
        store.write_json(store.join(out_dir, ERROR_IDS), record)  # present only when complete


def error_set(out_dir: str, train_uri: str) -> tuple[str, dict]:
    """E_{t-1} as rows of the current training data (re-distilled before this iteration or not: whether an
    answer is right depends on image, question and answer only), written to `out_dir/errors`."""
    record = store.read_json(store.join(out_dir, ERROR_IDS))
    wrong = pc.field("id").isin(pa.array(record.pop("ids"), pa.string()))
    path = store.join(out_dir, "errors")
    Selection(train_uri, [wrong], "E").write(path, row_group_rows=None)  # a streaming scan, ids pushed down
    return path, record
