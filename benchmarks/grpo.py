"""Both GRPO benchmarks of the GRPO issue, each a ratio against a baseline measured in the same run:

1. weight sync against a raw `ray.put` + `ray.get` of the same bytes (`grpo_sync.py`, target <= 1.3x);
2. GRPO completions/s against TRL's GRPOTrainer on the same tiny model and data (`grpo_vs_trl.py`,
   target >= 1.5x; needs the `bench` extra: pip install --no-deps trl==1.16.0 accelerate).

    .venv/bin/python benchmarks/grpo.py
Each part also runs alone, with its own options.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    # One process each: an in-process vLLM pins torch to one thread, and each part starts its own Ray.
    subprocess.run([sys.executable, os.path.join(HERE, "grpo_sync.py")], check=True)
    if importlib.util.find_spec("trl") is None:
        print("TRL comparison skipped: install the bench extra (pip install --no-deps trl==1.16.0 accelerate)")
    else:
        subprocess.run([sys.executable, os.path.join(HERE, "grpo_vs_trl.py")], check=True)
