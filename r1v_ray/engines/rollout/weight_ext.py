"""vLLM worker extension for the NCCL weight-sync transport (vLLM's RLHF pattern, as OpenRLHF uses it).

vLLM mixes this class into its GPU workers (`worker_extension_cls`); the engine
reaches the methods with `collective_rpc`. Learner rank 0 and every vLLM worker
of every rollout engine join one `StatelessProcessGroup` with a
`PyNcclCommunicator`; rank 0 broadcasts each trainable tensor and the workers
load them with `reload_weights` (HF names, partial dicts: the same call as the
object-store transport).
"""

from __future__ import annotations


class WeightSyncExtension:
    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = rank_offset + get_world_group().rank  # this worker's place after learner rank 0
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self._r1v_weight_group = PyNcclCommunicator(group, device=torch.cuda.current_device())
        return rank

    def receive_weights(self, meta: list[tuple[str, str, list[int]]]) -> int:
        """Receive `meta`'s tensors (name, torch dtype name, shape) in order from rank 0, then load them."""
        import torch

        stream = torch.cuda.current_stream()
        weights = []
        for name, dtype, shape in meta:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device="cuda")
            self._r1v_weight_group.broadcast(tensor, src=0, stream=stream)
            weights.append((name, tensor))
        stream.synchronize()
        self.reload_weights(weights_iterator=weights)
        return len(weights)
