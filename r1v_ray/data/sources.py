"""Where a run's canonical train and test data are: configured paths, or the synthetic task written once."""

from __future__ import annotations

from r1v_ray import store
from r1v_ray.config import R1VConfig
from r1v_ray.data.synthetic import write_split
from r1v_ray.run_dir import RunLayout


def dataset_uris(cfg: R1VConfig) -> tuple[str, str]:
    """(train, test) canonical datasets for this run."""
    if cfg.data.source == "parquet":
        if not cfg.data.train_path or not cfg.data.test_path:
            raise ValueError("data.source=parquet needs data.train_path and data.test_path")
        return cfg.data.train_path, cfg.data.test_path
    s = cfg.data.synthetic
    paths = []
    for split, n in (("train", s.n_train), ("test", s.n_test)):
        uri = RunLayout(cfg.run_dir).synthetic(split)
        # A dataset folder only ever appears complete.
        store.write_dir_once(
            uri, lambda out: write_split(out, n, seed=s.seed, split=split, image_size=s.image_size, tasks=s.tasks)
        )
        paths.append(uri)
    return paths[0], paths[1]
