"""A pretrained tiny model zoo: the paper's parts in miniature, trained here in a few minutes on CPU.

* vision encoder: an InternViT pretrained on the synthetic renderer to predict, at each of its image
  tokens (after the pixel shuffle), one word of what the image shows (`task.SCENE_WORDS`: colours,
  shapes, counts, digits), as a real ViT is pretrained before anyone attaches it to an LLM;
* base LM: a Qwen2 pretrained on text renderings of the task, the scene's words standing where the
  image tokens will stand, then the question and its answer (with and without reasoning);
* substitute LLM (Qwen2.5-Instruct in miniature): the base tuned to answer directly; its tokenizer
  has the image tokens;
* reasoning LLM (DeepSeek-R1-Distill in miniature): the same base tuned on `<think>` chains; its
  tokenizer has another special token and no image tokens.

The two LLMs share the base, so a projector trained against one transfers to the other (paper 2.1).
The parts are ordinary HF checkpoints, loaded by `factory.load_vision` / `factory.load_llm`. The task
(renderer and corpus) is passed in, so the model layer does not import the data layer. Plain torch
loops: Ray Train's SFT recipe would spend more time starting than these runs take.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import GotOcr2ImageProcessor, InternVLVisionModel, PreTrainedTokenizerBase, Qwen2ForCausalLM
from transformers.models.internvl.modeling_internvl import InternVLModel

from r1v_ray.atomic import atomic_dir
from r1v_ray.config import TinyModelConfig, ZooConfig
from r1v_ray.model.tokenizer import BOS, EOS, assistant_text, ensure_image_tokens, train_bpe_tokenizer
from r1v_ray.prompts import question_text
from r1v_ray.rewards import accuracy_reward

ZOO_VERSION = 2  # bump when the recipe changes: old caches are then ignored
REASONING_SPECIAL = "<|tool_call|>"  # the reasoning tokenizer's own special token (the substitute lacks it)
SLOTS = 4  # image tokens per 64-px tile (16 patches, pixel shuffle 0.5): one scene word each
NAMES = ("vision", "substitute_llm", "reasoning_llm")


def scene_token(word: str) -> str:
    return f"[{word}]"


def zoo_key(t: TinyModelConfig, z: ZooConfig) -> str:
    """The cache key: every setting that changes a weight (not where the cache lives)."""
    settings = {
        "version": ZOO_VERSION,
        "tiny": asdict(t),
        "zoo": {k: v for k, v in asdict(z).items() if k != "cache_dir"},
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def zoo_dir(t: TinyModelConfig, z: ZooConfig) -> str:
    root = (
        z.cache_dir
        or os.environ.get("R1V_ZOO_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "r1v_ray", "zoo")
    )
    return os.path.join(root, zoo_key(t, z))


def _rows(task, z: ZooConfig, n: int, split: str) -> list[dict]:
    return [task.make_row(z.seed, split, i, z.image_size, with_scene=True) for i in range(n)]


def zoo_parts(t: TinyModelConfig, z: ZooConfig, task) -> tuple[str, str, str]:
    """(vision, substitute_llm, reasoning_llm) in the cache, built first when missing or incomplete."""
    from r1v_ray.model.assemble import checkpoint_complete

    out = zoo_dir(t, z)
    paths = tuple(os.path.join(out, n) for n in NAMES)
    if not all(checkpoint_complete(p) for p in paths):
        build_zoo(t, z, task, out)
    return paths


# --------------------------------------------------------------------------- vision


def image_features(vision: InternVLVisionModel, pixel_values: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """(B, tokens, 4C): the features the InternVL projector reads (CLS dropped, pixel-shuffled)."""
    feats = vision(pixel_values=pixel_values).last_hidden_state[:, 1:, :]
    b, n, c = feats.shape
    side = int(n**0.5)
    shuffled = InternVLModel.pixel_shuffle(None, feats.reshape(b, side, side, c), scale_factor=ratio)
    return shuffled.reshape(b, -1, shuffled.shape[-1])


def pretrain_vision(vision: InternVLVisionModel, rows: list[dict], words: list[str], z: ZooConfig, log) -> dict:
    """Each image token's features predict its scene word (one linear head shared by the tokens)."""
    size = vision.config.image_size[0]
    processor = GotOcr2ImageProcessor(size={"height": size, "width": size}, crop_to_patches=False)
    images = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    target = torch.tensor([[words.index(w) for w in r["scene"]] for r in rows])
    n_test = max(1, len(rows) // 10)
    head = torch.nn.Linear(4 * vision.config.hidden_size, len(words))
    params = list(vision.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=z.learning_rate, weight_decay=0.01)
    gen = torch.Generator().manual_seed(z.seed)
    vision.train()
    for step in range(z.vision_steps):
        idx = n_test + torch.randint(0, len(rows) - n_test, (z.batch_size * 4,), generator=gen)
        logits = head(image_features(vision, pixels[idx]))
        loss = F.cross_entropy(logits.reshape(-1, len(words)), target[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"[zoo] vision step {step}: loss {loss.item():.3f}")
    vision.eval()
    with torch.no_grad():
        pred = head(image_features(vision, pixels[:n_test])).argmax(-1)
    return {"slot_accuracy": round((pred == target[:n_test]).float().mean().item(), 4), "loss": round(loss.item(), 4)}


# --------------------------------------------------------------------------- language


class TextRenderer:
    """Token ids of one chat turn as the R1V model will see it, the scene's words in the image tokens' place.

    The image's `<img>` / `</img>` stand around the image tokens; here random tokens stand there, so the
    LMs learn to read what lies between and ignore the delimiters (which re-assembly initializes anew)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task, rows_of_embedding: int):
        self.tok, self.task, self.rows = tokenizer, task, rows_of_embedding
        self.head = tokenizer(f"{BOS}user\n", add_special_tokens=False)["input_ids"]

    def scene_slots(self) -> slice:
        """Where the scene's words (the image tokens) stand in every encoded sequence."""
        return slice(len(self.head) + 1, len(self.head) + 1 + SLOTS)

    def encode(self, row: dict, response: str, gen: torch.Generator) -> tuple[list[int], int]:
        """(ids, where the response starts)."""
        scene = [self.tok.convert_tokens_to_ids(scene_token(w)) for w in row["scene"]]
        delim = torch.randint(0, self.rows, (2,), generator=gen).tolist()
        prompt = self.tok(f"\n{question_text(row)}{EOS}\n{BOS}assistant\n", add_special_tokens=False)["input_ids"]
        answer = self.tok(f"{response}{EOS}", add_special_tokens=False)["input_ids"]
        ids = self.head + [delim[0], *scene, delim[1]] + prompt
        return ids + answer, len(ids)


def _noisy_scene(embeds: torch.Tensor, slots: slice, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise on the scene words' embeddings, of `scale` times their norm: the LM learns to read a
    neighbourhood of each word, so a projector trained through it (MLP-init) gets a gradient that points
    towards the right word from wherever a fresh projector starts (without it, the loss through the frozen
    LM did not fall in 200 projector steps: benchmarks/zoo_diagnose.py level f)."""
    scene = embeds[:, slots]
    noise = torch.randn(scene.shape, generator=gen) * scale * scene.detach().norm(dim=-1, keepdim=True)
    noise = noise / scene.shape[-1] ** 0.5
    return torch.cat([embeds[:, : slots.start], scene + noise, embeds[:, slots.stop :]], dim=1)


def direct_response(row: dict) -> str:
    return f"Answer: \\boxed{{{row['answer']}}}"


def think_response(row: dict) -> str:
    return assistant_text(row["rationale"], direct_response(row))


def train_lm(
    model: Qwen2ForCausalLM,
    renderer: TextRenderer,
    rows: list[dict],
    styles,
    steps: int,
    lr: float,
    z: ZooConfig,
    log,
    name: str,
) -> tuple[Qwen2ForCausalLM, dict]:
    """Causal-LM training on rendered rows; the loss covers the response (and, for the base, the question)."""
    gen = torch.Generator().manual_seed(z.seed + len(name))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(1, steps)))
    model.train()
    pad = renderer.tok.pad_token_id
    for step in range(steps):
        batch = []
        for i in torch.randint(0, len(rows), (z.batch_size,), generator=gen).tolist():
            style = styles[int(torch.randint(0, len(styles), (1,), generator=gen))]
            batch.append(renderer.encode(rows[i], style(rows[i]), gen))
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (ids, start) in enumerate(batch):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            labels[b, start : len(ids)] = torch.tensor(ids[start:])
            mask[b, : len(ids)] = 1
        embeds = model.get_input_embeddings()(input_ids)
        if z.scene_noise:
            embeds = _noisy_scene(embeds, renderer.scene_slots(), z.scene_noise, gen)
        loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            log(f"[zoo] {name} step {step}: loss {loss.item():.3f}")
    return model.eval(), {"loss": round(loss.item(), 4), "steps": steps}


@torch.no_grad()
def text_accuracy(model, renderer: TextRenderer, rows: list[dict], max_new_tokens: int, batch: int = 16) -> dict:
    """Greedy Pass@1 (%) per task given the true scene words: the ceiling the image path can reach."""
    gen, pad = torch.Generator().manual_seed(0), renderer.tok.pad_token_id
    right: dict = {}
    for lo in range(0, len(rows), batch):
        chunk = rows[lo : lo + batch]
        prompts = [renderer.encode(r, "", gen) for r in chunk]
        prompts = [ids[:start] for ids, start in prompts]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
        for row, seq in zip(chunk, out[:, width:]):
            text = renderer.tok.decode(seq, skip_special_tokens=True)
            ok = accuracy_reward(text, row["answer"], list(row["choices"]) if row.get("choices") else None)
            right.setdefault(row["category"], []).append(ok)
    per = {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(right.items())}
    return {"all": round(100 * sum(sum(v) for v in right.values()) / max(1, len(rows)), 1), **per}


def _tokenizers(
    task, t: TinyModelConfig
) -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """(base, substitute, reasoning): one BPE vocabulary plus the scene words; the two derived ones
    differ in their special tokens (image tokens / REASONING_SPECIAL)."""
    base = train_bpe_tokenizer(task.corpus(400, seed=t.seed), t.vocab_size, with_image_tokens=False)
    base.add_tokens([scene_token(w) for w in task.SCENE_WORDS])
    substitute = copy.deepcopy(base)
    ensure_image_tokens(substitute)
    reasoning = copy.deepcopy(base)
    reasoning.add_special_tokens({"additional_special_tokens": [REASONING_SPECIAL]}, replace_extra_special_tokens=False)
    return base, substitute, reasoning


class _Clock:
    """Wall and CPU seconds per phase (the CPU figure extrapolates to an idle machine when it is shared)."""

    def __init__(self):
        self.times: dict = {}
        self._last = (time.time(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.time(), time.process_time())
        self.times[name] = {"wall_s": round(now[0] - self._last[0], 1), "cpu_s": round(now[1] - self._last[1], 1)}
        self._last = now


def build_zoo(t: TinyModelConfig, z: ZooConfig, task, out_dir: str, log=print) -> dict:
    """Train the three parts and write them (with `zoo.json`, what each training reached) into `out_dir`.

    On one intra-op thread: these matrices are too small to split, and on a shared machine a second
    OpenMP thread spin-waits (measured: 0.12 CPU-s a base-LM step on one thread, 1.4 on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(t, z, task, out_dir, log)
    finally:
        torch.set_num_threads(threads)


def _build(t: TinyModelConfig, z: ZooConfig, task, out_dir: str, log) -> dict:
    """The vision tower and the base LM train at once (the tower in a child process), then the two tunes
    (the reasoning LLM's in a child): each part draws from its own generators and seeds, so every weight is
    what one process building them in turn would get, in about half the time on 2 cores."""
    from r1v_ray.model.factory import tiny_text_config, tiny_vision_config

    start, clock = time.time(), _Clock()
    torch.manual_seed(z.seed)
    rows = _rows(task, z, z.rows, "zoo")
    held_out = _rows(task, z, z.check_rows, "zoo-test")
    base_tok, sub_tok, reason_tok = _tokenizers(task, t)
    record: dict = {"key": zoo_key(t, z), "rows": len(rows), "times": clock.times}
    clock.lap("render_and_tokenizer")
    with atomic_dir(out_dir) as tmp:
        vision = InternVLVisionModel(tiny_vision_config(t))
        with _InChild(
            _train_vision, vision.config, vision.state_dict(), torch.get_rng_state(), rows, list(task.SCENE_WORDS),
            z, os.path.join(tmp, "vision"),
        ) as vision_child:  # fmt: skip
            text_cfg = tiny_text_config(t, base_tok)
            text_cfg.vocab_size = max(text_cfg.vocab_size, len(sub_tok), len(reason_tok))
            torch.manual_seed(z.seed + 1)
            base = Qwen2ForCausalLM(text_cfg)
            renderer = TextRenderer(base_tok, task, text_cfg.vocab_size)
            base, record["base"] = train_lm(
                base, renderer, rows, (direct_response, think_response), z.base_steps, z.learning_rate, z, log, "base"
            )
            record["vision"] = vision_child.result()
        clock.lap("vision_and_base")

        # The substitute answers directly (greedy: its majority style) but still models chains, so MLP-init's
        # <think> targets train the projector on the image's content rather than on switching the LLM's style.
        tune = (text_cfg, base.state_dict(), base_tok, task.__name__, rows, held_out, z)
        with _InChild(_tune, "reasoning_llm", reason_tok, (think_response,), *tune, tmp) as reasoning_child:
            substitute = (direct_response,) * 3 + (think_response,)
            record["substitute_llm"] = _tune("substitute_llm", sub_tok, substitute, *tune, tmp, log)
            record["reasoning_llm"] = reasoning_child.result()
        clock.lap("tunes")
        record["build_s"] = round(time.time() - start, 1)
        with open(os.path.join(tmp, "zoo.json"), "w") as f:
            json.dump(record, f, indent=2)
    log(f"[zoo] built in {record['build_s']} s: {json.dumps(record)}")
    return record


class _InChild:
    """`fn(*args)` in a fresh interpreter on one intra-op thread, like the parent's (not multiprocessing's
    spawn: it re-runs the caller's main script). The call and its result travel as pickles in a private
    temporary directory. Left before its result was taken (the parent failed), the child is stopped."""

    def __init__(self, fn, *args):
        self.name, self.work = fn.__name__, tempfile.mkdtemp(prefix="r1v_zoo_")
        with open(os.path.join(self.work, "call.pkl"), "wb") as f:
            pickle.dump((fn, args), f)
        self.proc = subprocess.Popen([sys.executable, "-m", "r1v_ray.model.zoo", self.work])

    def result(self):
        if self.proc.wait() != 0:
            raise RuntimeError(f"the zoo's {self.name} failed in its process (exit code {self.proc.returncode})")
        with open(os.path.join(self.work, "result.pkl"), "rb") as f:
            return pickle.load(f)

    def __enter__(self) -> _InChild:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def _child(work: str) -> None:
    torch.set_num_threads(1)
    with open(os.path.join(work, "call.pkl"), "rb") as f:
        fn, args = pickle.load(f)
    result = fn(*args)
    with open(os.path.join(work, "result.pkl"), "wb") as f:
        pickle.dump(result, f)


def _train_vision(config, state: dict, rng: torch.Tensor, rows: list[dict], words: list[str], z, path: str) -> dict:
    """The tower's pretraining, saved at `path`; `rng`: the global generator as the parent left it after
    building the tower (the prediction head's initialization draws from it)."""
    vision = InternVLVisionModel(config)
    vision.load_state_dict(state)
    torch.set_rng_state(rng)
    record = pretrain_vision(vision, rows, words, z, print)
    vision.save_pretrained(path, safe_serialization=True)
    return record


def _tune(name, tok, styles, text_cfg, base_state, base_tok, task_name, rows, held_out, z, out_dir, log=print) -> dict:
    """One LLM tuned from the base (its weights `base_state`) and saved with its tokenizer at out_dir/name."""
    task = importlib.import_module(task_name)
    model = Qwen2ForCausalLM(text_cfg)
    model.load_state_dict(base_state)
    renderer = TextRenderer(base_tok, task, text_cfg.vocab_size)
    model, rec = train_lm(model, renderer, rows, styles, z.tune_steps, z.learning_rate / 4, z, log, name)
    renderer_of = TextRenderer(tok, task, text_cfg.vocab_size)
    rec["text_accuracy"] = text_accuracy(model, renderer_of, held_out, 80) if held_out else None
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
    tok.save_pretrained(os.path.join(out_dir, name))
    return rec


if __name__ == "__main__":
    _child(sys.argv[1])
