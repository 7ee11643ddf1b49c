"""Greedy tokens of a checkpoint in vLLM for synthetic image prompts (run in its own process:
an in-process vLLM pins torch to one thread, which must not leak into the test process)."""

import io
import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from PIL import Image
from transformers import AutoProcessor
from vllm import LLM, SamplingParams

from r1v_ray.data.synthetic import make_row


def main(path: str, n: int, max_tokens: int) -> None:
    llm = LLM(
        model=path,
        enforce_eager=True,
        max_model_len=512,
        dtype="float32",
        seed=0,
        limit_mm_per_prompt={"image": 1, "video": 0},
    )
    processor = AutoProcessor.from_pretrained(path)
    prompts = []
    for i in range(n):
        row = make_row(0, "test", i)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(
            {"prompt": text, "multi_modal_data": {"image": Image.open(io.BytesIO(row["image"])).convert("RGB")}}
        )
    outputs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
