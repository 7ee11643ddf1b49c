"""GRPO learners: Ray actors holding DeepSpeed engines in one process group (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import socket
import time

import ray
import torch

from r1v_ray import store
from r1v_ray.config import GRPOConfig
from r1v_ray.grpo.algorithms import (
    aggregate,
    clipped_surrogate,
    kl_penalty,
    logprob_gap,
    masked_mean,
    sequence_clipped_surrogate,
    truncated_is_weights,
)
from r1v_ray.grpo.batch import Trajectory, completion_logprobs, encode


class LearnerWorker:
    def __init__(
        self,
        checkpoint: str,
        cfg: GRPOConfig,
        trainable_prefixes: list[str],
        rank: int,
        world: int,
        use_gpu: bool = False,
        dtype: str = "float32",
        max_model_len: int = 16384,
        reference_checkpoint: str | None = None,
    ):
        """`reference_checkpoint`: the KL term's reference model (the stage's initial model; a resumed run
        starts its learner from a later checkpoint). None: `checkpoint`."""
        self.checkpoint, self.cfg, self.prefixes = checkpoint, cfg, trainable_prefixes
        self.reference_checkpoint = reference_checkpoint or checkpoint
        self.rank, self.world, self.use_gpu, self.dtype, self.max_model_len = rank, world, use_gpu, dtype, max_model_len

    def address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def init(self, master_addr: str, master_port: int) -> int:
        """Join the learners' process group, then build the model and its DeepSpeed engine."""
        from r1v_ray.engines.learner import LearnerEngine, select_accelerator

        select_accelerator(self.use_gpu)
        import torch.distributed as dist

        from r1v_ray.model.assemble import load_checkpoint
        from r1v_ray.model.varlen import use_varlen_attention
        from r1v_ray.prompts import PromptBuilder

        # DeepSpeed reads the torch launcher's variables; one learner per placement-group bundle (one GPU each).
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world),
            LOCAL_RANK="0",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        dist.init_process_group(
            "nccl" if self.use_gpu else "gloo",
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=self.rank,
            world_size=self.world,
        )
        self.device = "cuda" if self.use_gpu else "cpu"
        torch.manual_seed(self.cfg.seed + self.rank)
        self.ref = None
        if self.cfg.kl_coef > 0:  # reference-free unless a KL term is asked for
            # Loaded before the learner: under ZeRO-3 the learner's loading partitions what it builds.
            self.ref, _ = load_checkpoint(self.reference_checkpoint, dtype=self.dtype, device=self.device)
            use_varlen_attention(self.ref)
            self.ref.requires_grad_(False)
        self.learner = LearnerEngine(
            self.checkpoint, self.prefixes, zero_stage=self.cfg.zero_stage, use_gpu=self.use_gpu, dtype=self.dtype,
            device=self.device, world=self.world,
        )  # fmt: skip
        self.processor = self.learner.processor
        self.builder = PromptBuilder(self.processor, self.max_model_len)
        self.learner.start(
            torch.optim.AdamW(self.learner.trainable_parameters(), lr=self.cfg.learning_rate, weight_decay=0.0)
        )
        self.engine = self.learner.engine
        return self.rank

    def _padded(self, values: list[list[float]], width: int) -> torch.Tensor:
        out = torch.zeros(len(values), width, device=self.device)
        for i, v in enumerate(values):
            out[i, : len(v)] = torch.tensor(v[:width], device=self.device)
        return out

    def train_step(self, trajectories: list[Trajectory], padding: bool = False) -> dict:
        """`inner_epochs` updates on this rank's share, against the rollout-time log-probs (or, with
        `tis_cap`, the learner's own before the update, each token weighted by truncated importance sampling;
        with `old_logprobs: learner`, the learner's own, unweighted).

        The loss is normalized by the whole batch's token (or sequence) count, summed over ranks, so that
        unequal shares weigh what they hold. `padding`: this rank got nothing this step and runs a
        zero-weight copy, only to take part in the collectives.
        """
        import torch.distributed as dist

        clock = time.perf_counter()
        groups = encode(trajectories, self.processor, self.builder)
        stats: dict[str, float] = {"encode_s": time.perf_counter() - clock}
        adv = torch.tensor([t.advantage for t in trajectories], device=self.device)
        counts = torch.tensor(
            [
                0.0 if padding else float(sum(len(t.completion_ids) for t in trajectories)),
                0.0 if padding else float(len(trajectories)),
            ],
            device=self.device,
        )
        dist.all_reduce(counts)
        weight = 0.0 if padding else float(self.world)  # DeepSpeed averages gradients over the ranks
        ref_logp, clock = None, time.perf_counter()
        if self.ref is not None:
            with torch.no_grad():
                ref_logp, _, _ = completion_logprobs(self.ref, groups, self.device)
        stats["ref_logprobs_s"] = time.perf_counter() - clock
        rollout, proximal = None, None
        stats.update(forward_s=0.0, backward_s=0.0, optimizer_s=0.0)
        for epoch in range(self.cfg.inner_epochs):
            clock = time.perf_counter()
            logp, mask, entropy = completion_logprobs(self.engine, groups, self.device, with_entropy=(epoch == 0))
            if epoch == 0:
                proximal = logp.detach()  # the learner's log-probs before this step's updates
                stats["entropy"] = masked_mean(entropy, mask).item()
                if self.cfg.old_logprobs == "rollout":
                    rollout = self._rollout_logprobs(trajectories, logp.shape[1], padding)
                    stats["logprob_gap"] = logprob_gap(proximal, rollout, mask)
            per_token, clipped, kl = self._token_loss(logp, rollout, proximal, ref_logp, adv, mask)
            loss = weight * aggregate(
                per_token, mask, self.cfg.loss_agg, self.cfg.max_completion_tokens, *counts.tolist()
            )
            self._stop_together_unless_finite(loss, epoch)
            stats["forward_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            self.engine.backward(loss)
            stats["backward_s"] += time.perf_counter() - clock  # gradient all-reduce included
            clock = time.perf_counter()
            self.engine.step()
            stats["optimizer_s"] += time.perf_counter() - clock
            stats.update(
                loss=loss.item(),
                kl=masked_mean(kl, mask).item(),
                clip_frac=masked_mean(clipped, mask).item(),
                grad_norm=float(self.engine.get_global_grad_norm() or 0.0),
            )
        return stats

    def _stop_together_unless_finite(self, loss: torch.Tensor, epoch: int) -> None:
        """Every rank must stop together: one rank raising alone would leave the others waiting in
        backward's gradient all-reduce."""
        import torch.distributed as dist

        finite = torch.tensor([float(torch.isfinite(loss))], device=self.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1.0:
            raise FloatingPointError(
                f"GRPO loss is non-finite on a learner (this rank: {loss.item()}) at inner "
                f"epoch {epoch}; the step is stopped before any update is applied or "
                "checkpointed"
            )

    def _rollout_logprobs(self, trajectories: list[Trajectory], width: int, padding: bool) -> torch.Tensor:
        missing = [t.request.request_id for t in trajectories if len(t.rollout_logprobs) != len(t.completion_ids)]
        if missing and not padding:
            raise ValueError(
                f"{len(missing)} trajectories (first: {missing[0]}) lack one rollout log-prob per completion "
                "token: the rollout engine must return per-token logprobs (Sampling.logprobs=True)"
            )
        return self._padded([t.rollout_logprobs for t in trajectories], width)

    def _token_loss(self, logp, rollout, proximal, ref_logp, adv, mask):
        """Per-token loss [n, T] (surrogate, truncated-IS weight, KL term), clip indicator and KL, by config."""
        cfg = self.cfg
        old = rollout if cfg.tis_cap is None and cfg.old_logprobs == "rollout" else proximal
        surrogate = sequence_clipped_surrogate if cfg.policy_ratio == "sequence" else clipped_surrogate
        per_token, clipped = surrogate(logp, old, adv, mask, cfg.clip_eps, cfg.clip_eps_high)
        if cfg.tis_cap is not None:
            per_token = per_token * truncated_is_weights(proximal, rollout, mask, cfg.tis_cap)
        kl = torch.zeros_like(per_token)
        if ref_logp is not None:
            kl = kl_penalty(logp, ref_logp, cfg.kl_estimator) * mask
            per_token = per_token + cfg.kl_coef * kl
        return per_token, clipped, kl

    @torch.no_grad()
    def logprobs(self, trajectories: list[Trajectory]) -> list[list[float]]:
        """The learner's current log-probs of each trajectory's completion tokens."""
        logp, mask, _ = completion_logprobs(
            self.engine.module, encode(trajectories, self.processor, self.builder), self.device
        )
        return [row[: int(m.sum())].tolist() for row, m in zip(logp, mask)]

    def _gathered_trainable(self):
        return self.learner.gathered(only_trainable=True, rank=self.rank)

    def trainable_buckets(self, bucket_bytes: int) -> list:
        """Object-store transport: trainable tensors put in the object store in buckets; rank 0 returns the refs."""
        buckets, current, size = [], {}, 0
        for name, tensor in self._gathered_trainable():
            if tensor is None:
                continue
            current[name] = tensor.to("cpu", copy=True)
            size += tensor.numel() * tensor.element_size()
            if size >= bucket_bytes:
                buckets.append(ray.put(current))
                current, size = {}, 0
        if current:
            buckets.append(ray.put(current))
        return buckets

    def weight_meta(self) -> list[tuple[str, str, list[int]]]:
        """(name, dtype, shape) of each trainable tensor, in the order `broadcast_weights` sends them."""
        meta = []
        for name, param in self.engine.module.named_parameters():
            if param.requires_grad:
                shape = list(getattr(param, "ds_shape", param.shape))  # ZeRO-3 keeps the full shape aside
                meta.append((name, str(param.dtype).removeprefix("torch."), shape))
        return meta

    def init_weight_group(self, host: str, port: int, world_size: int) -> None:
        """NCCL transport: rank 0 of the group the rollout engines' vLLM workers join (vLLM's RLHF pattern)."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world_size)
        self.weight_group = PyNcclCommunicator(group, device=torch.cuda.current_device())

    def broadcast_weights(self) -> int:
        """NCCL transport: every rank gathers, rank 0 broadcasts each trainable tensor to the rollout workers."""
        sent = 0
        for _, tensor in self._gathered_trainable():
            if tensor is not None:
                self.weight_group.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())
                sent += 1
        if sent:
            torch.cuda.current_stream().synchronize()
        return sent

    def save(self, path: str, step: int) -> None:
        """DeepSpeed state (optimizer included) for resuming, plus a standard HF checkpoint at path/model.
        On an object store each rank writes in its node's scratch and adds its own files to `path`."""
        with store.writing_dir(path, replace=False) as local:
            self.learner.save_state(local)
            meta = {"stage": "grpo", "step": step, "init_checkpoint": self.checkpoint}
            self.learner.export_hf(os.path.join(local, "model"), self.rank, meta)

    def load(self, path: str) -> None:
        # Only the DeepSpeed state is staged (not the HF export); its local copy keeps the `ds` name.
        self.learner.load_state(os.path.dirname(store.stage_in(store.join(path, "ds"))))
