"""The R1V model: assembly, trainable parts, re-assembly, tokenizers, tiny parts."""

from r1v_ray.model.assemble import assemble, build_processor, load_checkpoint, save_checkpoint
from r1v_ray.model.freeze import parameter_summary, set_trainable, trainable_state_dict
from r1v_ray.model.reassemble import ReassemblyError, reassemble

__all__ = [
    "ReassemblyError",
    "assemble",
    "build_processor",
    "load_checkpoint",
    "parameter_summary",
    "reassemble",
    "save_checkpoint",
    "set_trainable",
    "trainable_state_dict",
]
