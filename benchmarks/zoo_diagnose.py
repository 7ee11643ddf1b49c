"""The zoo's chain of upper bounds on the test split (issue 13): where does image accuracy get lost?

(a) vision: a linear probe's per-scene-word accuracy on the encoder's image-token features;
(b) text:   the substitute (and reasoning) LLM answering from the zoo's text rendering, true scene words;
(c) oracle: the real prompt (chat template + processor), the true scene words' input embeddings at the
            image tokens' positions (a perfect projector);
(d) regress: a fresh projector trained only to regress the vision features onto those embeddings;
(e) ckpt:   any R1V checkpoints given (e.g. a run's mlp_init/model, reassemble/model), pixels in.

Greedy decoding, per task. Usage:
  PYTHONPATH=$PWD .venv/bin/python benchmarks/zoo_diagnose.py --zoo DIR [--rows 100] [--ckpt PATH ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from PIL import Image

from r1v_ray.data import synthetic
from r1v_ray.model.assemble import build_processor, load_checkpoint
from r1v_ray.model.factory import load_llm, load_vision
from r1v_ray.model.zoo import image_features, scene_token
from r1v_ray.prompts import row_choices, user_turn
from r1v_ray.rewards import accuracy_reward


def rows_of(split: str, n: int, start: int = 0) -> list[dict]:
    return [synthetic.make_row(0, split, i, 64, with_scene=True) for i in range(start, start + n)]


def pixels(processor, rows):
    imgs = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    return processor.image_processor(images=imgs, return_tensors="pt")["pixel_values"]


def prompt_ids(processor, row) -> torch.Tensor:
    text = processor.apply_chat_template([user_turn(row)], add_generation_prompt=True, tokenize=False)
    img = Image.open(io.BytesIO(row["image"])).convert("RGB")
    return processor(text=[text], images=[img], return_tensors="pt")["input_ids"][0]


@torch.no_grad()
def generate(llm, tok, embeds: list[torch.Tensor], max_new: int) -> list[str]:
    """Greedy continuations of a batch of prompts given as input embeddings (left-padded)."""
    width = max(e.shape[0] for e in embeds)
    pad = llm.get_input_embeddings().weight[tok.pad_token_id]
    batch = torch.stack([torch.cat([pad.expand(width - e.shape[0], -1), e]) for e in embeds])
    mask = torch.tensor([[0] * (width - e.shape[0]) + [1] * e.shape[0] for e in embeds])
    out = llm.generate(
        inputs_embeds=batch,
        attention_mask=mask,
        max_new_tokens=max_new,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return [tok.decode(o, skip_special_tokens=True) for o in out]


def score(rows, texts) -> dict:
    by = defaultdict(list)
    for r, t in zip(rows, texts):
        by[r["category"]].append(accuracy_reward(t, r["answer"], row_choices(r)))
    out = {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by.items())}
    out["all"] = round(100 * sum(sum(v) for v in by.values()) / len(rows), 1)
    return out


def probe(vision, processor, train, test, words) -> dict:
    """(a) a linear head on frozen features: per scene word, the share of its slots predicted right."""
    with torch.no_grad():
        ftr, fte = image_features(vision, pixels(processor, train)), image_features(vision, pixels(processor, test))
    ytr = torch.tensor([[words.index(w) for w in r["scene"]] for r in train])
    yte = torch.tensor([[words.index(w) for w in r["scene"]] for r in test])
    head = torch.nn.Linear(ftr.shape[-1], len(words))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(head(ftr).reshape(-1, len(words)), ytr.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = head(fte).argmax(-1)
    per = {w: [] for w in words}
    for p, y in zip(pred.reshape(-1).tolist(), yte.reshape(-1).tolist()):
        per[words[y]].append(p == y)
    out = {w: round(100 * sum(v) / len(v), 1) for w, v in per.items() if v}
    out["all_slots"] = round(100 * (pred == yte).float().mean().item(), 1)
    return out


def regress_projector(vision, processor, llm, tok, train, steps: int, lr: float):
    """(d) LayerNorm + MLP from pixel-shuffled features onto the scene words' input embeddings."""
    with torch.no_grad():
        feats = image_features(vision, pixels(processor, train))
        table = llm.get_input_embeddings().weight
        ids = torch.tensor([[tok.convert_tokens_to_ids(scene_token(w)) for w in r["scene"]] for r in train])
        target = table[ids]
    d = feats.shape[-1]
    proj = torch.nn.Sequential(
        torch.nn.LayerNorm(d),
        torch.nn.Linear(d, table.shape[1]),
        torch.nn.GELU(),
        torch.nn.Linear(table.shape[1], table.shape[1]),
    )
    opt = torch.optim.Adam(proj.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.mse_loss(proj(feats), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return proj, round(loss.item() / target.pow(2).mean().item(), 4)


def lm_projector(vision, processor, llm, tok, train, steps: int, lr: float, batch: int, log):
    """(f) MLP-init's objective outside Ray: a fresh projector trained through the frozen LLM on the SFT target
    (<think> rationale, boxed answer) of each row, the loss on the assistant turn."""
    from r1v_ray.sft.samples import sft_messages

    img_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    with torch.no_grad():
        feats = image_features(vision, pixels(processor, train))
    seqs = []
    for r in train:
        prompt = prompt_ids(processor, r)
        target = tok(sft_messages(r)[1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        seqs.append((torch.cat([prompt, torch.tensor(target)]), len(prompt)))
    d, h = feats.shape[-1], llm.config.hidden_size
    proj = torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, h))
    with torch.no_grad():  # initialized as r1v_ray.model.assemble.new_projector initializes it
        for lin in (proj[1], proj[3]):
            lin.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
            lin.bias.zero_()
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    for p in llm.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    table = llm.get_input_embeddings()
    for step in range(steps):
        idx = torch.randint(0, len(train), (batch,), generator=gen).tolist()
        width = max(len(seqs[i][0]) for i in idx)
        embeds, labels, mask = [], torch.full((batch, width), -100), torch.zeros(batch, width, dtype=torch.long)
        for b, i in enumerate(idx):
            ids, start = seqs[i]
            e = table(ids).clone()
            e[(ids == img_id).nonzero().flatten()] = proj(feats[i])
            embeds.append(torch.cat([e, table.weight[tok.pad_token_id].expand(width - len(ids), -1)]))
            labels[b, start : len(ids)] = ids[start:]
            mask[b, : len(ids)] = 1
        loss = llm(inputs_embeds=torch.stack(embeds), attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            log(f"f step {step}: loss {loss.item():.3f}")
    return proj


def run_llm(llm, tok, processor, rows, slot_vectors, max_new: int, batch: int = 20) -> list[str]:
    """Generate with `slot_vectors(i)` (4, H) at row i's image-token positions of the real prompt."""
    img_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    embeds = []
    for i, r in enumerate(rows):
        ids = prompt_ids(processor, r)
        with torch.no_grad():
            emb = llm.get_input_embeddings()(ids).clone()
            emb[(ids == img_id).nonzero().flatten()] = slot_vectors(i)
        embeds.append(emb)
    return [t for lo in range(0, len(rows), batch) for t in generate(llm, tok, embeds[lo : lo + batch], max_new)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--train-rows", type=int, default=1500)
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--regress-steps", type=int, default=500)
    ap.add_argument("--ckpt", nargs="*", default=[])
    ap.add_argument("--levels", default="abcdef")
    ap.add_argument("--lm-steps", type=int, default=300)
    ap.add_argument("--lm-lrs", type=float, nargs="*", default=[2e-3])
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny matrices; a second thread spin-waits on a shared machine
    t0 = time.time()
    vision = load_vision(os.path.join(args.zoo, "vision"))
    llm, tok = load_llm(os.path.join(args.zoo, "substitute_llm"))
    processor = build_processor(tok, vision.config, 0.5, 1)
    test, train = rows_of("test", args.rows), rows_of("zoo", args.train_rows)
    words = list(synthetic.SCENE_WORDS)
    report: dict = {"rows": len(test)}
    if "a" in args.levels:
        report["a_vision_probe"] = probe(vision, processor, train, test, words)
        print("a", report["a_vision_probe"], flush=True)
    table = llm.get_input_embeddings().weight
    scene_ids = [torch.tensor([tok.convert_tokens_to_ids(scene_token(w)) for w in r["scene"]]) for r in test]
    if "b" in args.levels:
        for name in ("substitute_llm", "reasoning_llm"):
            m, t = load_llm(os.path.join(args.zoo, name))
            if "<IMG_CONTEXT>" not in t.get_vocab():  # the reasoning LLM: the rendering as text, no image tokens
                from r1v_ray.model.tokenizer import ensure_image_tokens

                ensure_image_tokens(t)
            proc = build_processor(t, vision.config, 0.5, 1)
            emb_table = m.get_input_embeddings().weight
            ids = [torch.tensor([t.convert_tokens_to_ids(scene_token(w)) for w in r["scene"]]) for r in test]
            texts = run_llm(m, t, proc, test, lambda i, ids=ids, e=emb_table: e[ids[i]], args.max_new)
            report[f"b_text_{name}"] = score(test, texts)
            report[f"b_sample_{name}"] = texts[:3]
            print("b", name, report[f"b_text_{name}"], flush=True)
    if "c" in args.levels:
        texts = run_llm(llm, tok, processor, test, lambda i: table[scene_ids[i]], args.max_new)
        report["c_oracle"] = score(test, texts)
        print("c", report["c_oracle"], flush=True)
        shuffled = run_llm(llm, tok, processor, test, lambda i: table[scene_ids[(i + 5) % len(test)]], args.max_new)
        report["c_wrong_scene"] = score(test, shuffled)  # another row's scene: what the prompt alone gives
        print("c_wrong", report["c_wrong_scene"], flush=True)
    if "d" in args.levels:
        proj, rel = regress_projector(vision, processor, llm, tok, train, args.regress_steps, 3e-3)
        with torch.no_grad():
            slots = proj(image_features(vision, pixels(processor, test)))
        texts = run_llm(llm, tok, processor, test, lambda i: slots[i], args.max_new)
        report["d_regressed"] = {"relative_mse": rel, **score(test, texts)}
        print("d", report["d_regressed"], flush=True)
    if "f" in args.levels:
        for lr in args.lm_lrs:
            proj = lm_projector(vision, processor, llm, tok, train, args.lm_steps, lr, 16, print)
            with torch.no_grad():
                slots = proj(image_features(vision, pixels(processor, test)))
            texts = run_llm(llm, tok, processor, test, lambda i: slots[i], args.max_new)
            report[f"f_lm_loss_lr{lr}"] = score(test, texts)
            print("f", lr, report[f"f_lm_loss_lr{lr}"], flush=True)
    for path in args.ckpt if "e" in args.levels else []:
        model, proc = load_checkpoint(path)
        texts = []
        for lo in range(0, len(test), 20):
            chunk = test[lo : lo + 20]
            prompts = [
                proc.apply_chat_template([user_turn(r)], add_generation_prompt=True, tokenize=False) for r in chunk
            ]
            imgs = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in chunk]
            inp = proc(text=prompts, images=imgs, return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**inp, max_new_tokens=args.max_new, do_sample=False)
            texts += proc.tokenizer.batch_decode(out[:, inp["input_ids"].shape[1] :], skip_special_tokens=True)
        report[f"e_{path}"] = score(test, texts)
        report[f"e_sample_{path}"] = texts[:3]
        print("e", path, report[f"e_{path}"], flush=True)
    report["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
