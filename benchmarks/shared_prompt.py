"""Shared-prompt forward vs the plain forward: time and peak memory of one training micro-batch.

A GRPO micro-batch holds n responses to one image prompt. The plain forward runs the prompt
(and its image through the vision tower) n times; `actor.share_prompt=true` runs it once and the
responses run on its KV cache (rllava/models/shared_prompt.py). Both give the same log-probs and
gradients (tests/test_shared_prompt.py); this script measures what that saves.

Responses of different lengths (`--spread`) run on the cache in passes of similar lengths
(`response_passes`); the third variant, `shared_one_pass`, runs them in one pass padded to the longest,
as before passes, and `passes_time_ratio` compares the two.

    python benchmarks/shared_prompt.py                          # tiny Qwen2-VL "small", CPU, fp32
    python benchmarks/shared_prompt.py --response 256 --spread 0.9  # lengths 26 ... 256
    python benchmarks/shared_prompt.py --device cuda --size 2b --dtype bfloat16 --image 448 --response 256

Each variant runs in its own subprocess (peak memory is per process): build the model, then time
`reps` forward + backward passes of response log-probs (with entropy) after one warm-up. Prints
one JSON line: median seconds per pass, peak memory above the loaded model (CPU: VmHWM; CUDA:
max_memory_allocated) and the shared/plain and passes/one-pass ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from variants import add_model_arguments, run_variants, status_mb

from rllava.config import ActorConfig

VARIANTS = ("plain", "shared", "shared_one_pass")


def peak_mb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else status_mb("VmHWM")


def run_variant(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from rllava.data.types import Batch, Episode, Prompt
    from rllava.models.load import pad_token_id
    from rllava.models.logprobs import response_logprobs
    from rllava.models.tiny import build_tiny_model
    from rllava.roles.actor import forward_inputs

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model, processor = build_tiny_model(args.family, args.size, seed=0)
    model.to(dtype).train()
    _lift_pixel_cap(getattr(processor, "image_processor", None), args.image ** 2)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (args.image, args.image, 3), dtype=np.uint8))
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many objects are there?"}]}],
        add_generation_prompt=True, tokenize=False)
    enc = processor(text=[chat], images=[[image]], return_tensors="pt")
    seq_keys = [k for k in ("mm_token_type_ids", "token_type_ids") if k in enc]
    prompt = Prompt(input_ids=enc["input_ids"][0].tolist(),
                    mm={k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", *seq_keys)},
                    seq={k: enc[k][0].tolist() for k in seq_keys})
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    # shared_one_pass: every response in one pass, padded to the longest (as before passes)
    pass_tokens = 10**9 if args.variant == "shared_one_pass" else args.pass_tokens
    episodes = [Episode(prompt=prompt, response_ids=torch.randint(10, vocab - 64, (n,), generator=gen).tolist(),
                        response_mask=[1] * n, group_id=0) for n in response_lengths(args)]
    batch = Batch.from_episodes(episodes, pad_token_id(processor)).to(args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = peak_mb(args.device) if args.device == "cuda" else status_mb("VmRSS")
    times = []
    for _ in range(args.reps + 1):  # the first pass is a warm-up
        t0 = time.perf_counter()
        inputs, share = forward_inputs(model, batch, args.device, args.variant != "plain", sync_ranks=False,
                                       pass_tokens=pass_tokens)
        assert (share is not None) == (args.variant != "plain")
        logp, _ = response_logprobs(model, inputs, batch.responses, with_entropy=True, share=share)
        (logp * batch.response_mask).sum().backward()
        model.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times[1:]), "peak_mb": peak_mb(args.device) - base,
            "prompt_tokens": len(prompt.input_ids)}


def response_lengths(args: argparse.Namespace) -> list[int]:
    """The n responses' lengths: all `--response` tokens, or with `--spread s` evenly from (1 - s) x that up."""
    if args.n == 1:
        return [args.response]
    return [max(1, round(args.response * (1 - args.spread * (1 - i / (args.n - 1))))) for i in range(args.n)]


def _lift_pixel_cap(image_processor, pixels: int) -> None:
    """Qwen-VL processors cap an image's pixels (the tiny folders at 448 x 448): let `--image` through."""
    if image_processor is None:
        return
    if getattr(image_processor, "max_pixels", None):  # older transformers
        image_processor.max_pixels = max(image_processor.max_pixels, pixels)
    size = getattr(image_processor, "size", None)
    if isinstance(size, dict) and size.get("longest_edge"):
        size["longest_edge"] = max(size["longest_edge"], pixels)
    elif getattr(size, "longest_edge", None):
        size.longest_edge = max(size.longest_edge, pixels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p, family="qwen2_vl", threads=2, variants=VARIANTS)
    p.add_argument("--image", type=int, default=224, help="image side in pixels (Qwen2-VL: (side/28)^2 tokens)")
    p.add_argument("--n", type=int, default=8, help="responses per prompt")
    p.add_argument("--response", type=int, default=64, help="tokens per response (the longest, with --spread)")
    p.add_argument("--pass-tokens", type=int, default=ActorConfig.response_pass_tokens,
                   help="actor.response_pass_tokens of the shared variant")
    p.add_argument("--spread", type=float, default=0.0,
                   help="response lengths spread evenly from (1 - spread) x --response up (0: all the same)")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    res = run_variants(__file__, sys.argv[1:], VARIANTS)
    print(json.dumps({
        "family": args.family, "size": args.size, "device": args.device, "dtype": args.dtype, "n": args.n,
        "prompt_tokens": res["plain"]["prompt_tokens"], "response_tokens": response_lengths(args),
        "plain_s": round(res["plain"]["s"], 4), "shared_s": round(res["shared"]["s"], 4),
        "time_ratio": round(res["shared"]["s"] / res["plain"]["s"], 3),
        "shared_one_pass_s": round(res["shared_one_pass"]["s"], 4),
        "passes_time_ratio": round(res["shared"]["s"] / res["shared_one_pass"]["s"], 3),
        "plain_peak_mb": round(res["plain"]["peak_mb"], 1), "shared_peak_mb": round(res["shared"]["peak_mb"], 1),
        "memory_ratio": round(res["shared"]["peak_mb"] / res["plain"]["peak_mb"], 3),
        "shared_one_pass_peak_mb": round(res["shared_one_pass"]["peak_mb"], 1),
    }))


if __name__ == "__main__":
    main()
