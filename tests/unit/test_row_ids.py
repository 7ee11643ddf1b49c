"""Row ids are join keys: rows sharing one never swap results, and stages reject the duplicates with the reason."""

import pyarrow as pa

from r1v_ray.config import DistillConfig, JudgeConfig, RolloutConfig
from r1v_ray.data.io import read_parquet
from r1v_ray.data.synthetic import make_row
from r1v_ray.data.validate import UniqueIds
from r1v_ray.distill.dataflow import Tally, drain
from r1v_ray.distill.udfs import USAGE_COLUMNS, SelfDistill
from r1v_ray.metrics import StageMetrics


def _table(ids: list[str], errors: list[str | None]) -> pa.Table:
    columns = {"id": ids, "question": [f"q{i}" for i in range(len(ids))], "error": pa.array(errors, pa.string())}
    columns.update({name: [0] * len(ids) for name in USAGE_COLUMNS})
    return pa.table(columns)


def test_unique_ids_rejects_later_copies_within_and_across_batches():
    ids = UniqueIds()
    first = ids.mark(_table(["1", "2", "1", "9"], [None, None, None, "judge: down"]))
    second = ids.mark(_table(["2", "3", "9"], [None, None, None]))
    errors = first.column("error").to_pylist() + second.column("error").to_pylist()
    assert errors[:2] == [None, None] and errors[3] == "judge: down"
    assert "duplicate id: '1'" in errors[2] and "duplicate id: '2'" in errors[4]
    # A row already rejected for another reason does not claim its id: the later "9" is the first good one.
    assert errors[5:] == [None, None]


class _Batches:
    """The one Dataset method `drain` uses."""

    def __init__(self, tables):
        self.tables = tables

    def iter_batches(self, batch_format, batch_size):
        return iter(self.tables)


def test_a_stage_rejects_rows_whose_id_is_taken(tmp_path):
    tally = Tally("distill/assess", StageMetrics("distill/assess", None), 0.0, 0.0)
    out, rejected = str(tmp_path / "out"), str(tmp_path / "rejected")
    drain(_Batches([_table(["1", "2"], [None, None]), _table(["1", "3"], [None, None])]), out, rejected, tally)
    assert read_parquet(out).column("id").to_pylist() == ["1", "2", "3"]
    (row,) = read_parquet(rejected).to_pylist()
    assert row["id"] == "1" and row["reason"].startswith("duplicate id") and '"q0"' in row["row"]
    assert (tally.rows_in, tally.rows_out, tally.rejected) == (4, 3, 1)


def test_self_distillation_keeps_each_rows_own_generation(tiny_checkpoint):
    """Two rows with id "1" and different questions each get their own completion (they got the second's)."""
    rows = [{**make_row(0, "train", i), "id": "1", "rep_penalty": 1.0} for i in (0, 3)]
    udf = SelfDistill(
        tiny_checkpoint,
        RolloutConfig(backend="hf", device="cpu", max_model_len=512),
        "float32",
        JudgeConfig(kind="offline"),
        None,
        1,
        DistillConfig(max_tokens=12, temperature=0.0),
        0,
    )
    alone = [udf(pa.Table.from_pylist([row])).to_pylist()[0]["generated_text"] for row in rows]
    assert alone[0] != alone[1]
    together = udf(pa.Table.from_pylist(rows)).to_pylist()
    assert [r["generated_text"] for r in together] == alone


def test_the_learner_keeps_two_prompts_that_share_an_id_apart(tiny_checkpoint):
    from r1v_ray.grpo.batch import Trajectory, encode
    from r1v_ray.model import load_checkpoint
    from r1v_ray.prompts import PromptBuilder, paper_request

    _, processor = load_checkpoint(tiny_checkpoint)
    requests = [paper_request({**make_row(0, "train", i), "id": "1"}, 1, 16, 1.0, 1.0, seed=0) for i in (0, 3)]
    trajectories = [Trajectory(r, [300 + k], [], 0.0, 0.0) for r in requests for k in range(2)]
    groups = encode(trajectories, processor, PromptBuilder(processor, 1024))
    assert [g.members for g in groups] == [[0, 1], [2, 3]]  # was one group: the second row's completions
    assert groups[0].prompt_ids != groups[1].prompt_ids  # trained on the first row's prompt
