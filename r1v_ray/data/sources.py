"""Where a run's canonical train and test data are: configured paths, or the synthetic task written once."""

from __future__ import annotations

import os
import shutil

from r1v_ray.config import R1VConfig
from r1v_ray.data.synthetic import write_split


def dataset_uris(cfg: R1VConfig) -> tuple[str, str]:
    """(train, test) canonical datasets for this run."""
    if cfg.data.source == "parquet":
        if not cfg.data.train_path or not cfg.data.test_path:
            raise ValueError("data.source=parquet needs data.train_path and data.test_path")
        return cfg.data.train_path, cfg.data.test_path
    s = cfg.data.synthetic
    paths = []
    for split, n in (("train", s.n_train), ("test", s.n_test)):
        uri = os.path.join(cfg.run_dir, "data", f"synthetic_{split}")
        if not os.path.exists(uri):
            shutil.rmtree(uri + ".partial", ignore_errors=True)
            write_split(uri + ".partial", n, seed=s.seed, split=split, image_size=s.image_size, tasks=s.tasks)
            os.replace(uri + ".partial", uri)  # a dataset folder only ever appears complete
        paths.append(uri)
    return paths[0], paths[1]
