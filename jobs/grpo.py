"""GRPO (paper 2.2, stage 3): rollout actors, reward actors, DeepSpeed learners, weight sync.

    python jobs/grpo.py --config configs/demo/tiny.yaml [--force]
    ray job submit --working-dir . -- python jobs/grpo.py --config ...
Starts from the iterative-SFT model; trains on D_rm(grpo.tau); resumes from its last checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1v_ray.data.io import read_parquet  # noqa: E402
from r1v_ray.data.sources import dataset_uris  # noqa: E402
from r1v_ray.distill.recipes import training_data  # noqa: E402
from r1v_ray.grpo.trainer import GRPORun  # noqa: E402
from r1v_ray.runs import run_stage  # noqa: E402
from r1v_ray.runtime import init_ray, job_parser, load_job_config, stage_output  # noqa: E402
from r1v_ray.sft.data import d_rm  # noqa: E402


def body(cfg, base, train_uri, test_uri):
    def run(stage):
        data, how = d_rm(read_parquet(train_uri), cfg.sft.rm_score_column, cfg.grpo.tau)
        trainer = GRPORun(cfg, base, data.to_pylist(), read_parquet(test_uri).to_pylist(), stage.dir)
        try:
            result = trainer.run()
        finally:
            trainer.shutdown()
        return {"model": result["model"]}, {"heldout": result["heldout"], "d_rm": how, "rows": data.num_rows}

    return run


if __name__ == "__main__":
    args = job_parser(__doc__).parse_args()
    cfg = load_job_config(args)
    init_ray()
    base = stage_output(cfg, "sft")
    _, test_uri = dataset_uris(cfg)
    train_uri = training_data(cfg)
    manifest = run_stage(cfg, "grpo", body(cfg, base, train_uri, test_uri),
                         {"sft": base, "train": train_uri, "test": test_uri}, args.force)
    print("step  held-out reward")
    for point in manifest["metrics"]["heldout"]:
        print(f"{point['step']:>4}  {point['heldout_reward']:.3f}")
