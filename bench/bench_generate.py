"""Generation speed: megatron_zh's cached decoder against two baselines measured in the same run.

  python bench/bench_generate.py                                  # gpt2-distil, CPU, ~1 minute
  python bench/bench_generate.py --device cuda --batch 8 --new-tokens 256

Baselines on the same random weights, greedy, the same prompts:
  full      recompute GPT2Model.forward over the whole sequence for every new token (nanoGPT's
            `generate`, no cache): what generation costs without a key/value cache;
  hf        transformers' GPT2LMHeadModel.generate(use_cache=True) on the weights exported through
            megatron_zh.convert.hf_gpt2 (the reference implementation of a cached GPT-2).
Prints tokens/s of each and ours/baseline ratios (higher is better), and checks all three
produced the same tokens (greedy, fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_zh.convert.hf.names import to_hf_config, to_hf_state_dict  # noqa: E402 (needs the sys.path set-up above)
from megatron_zh.inference import GenerationConfig, SamplingConfig, generate_token_ids  # noqa: E402 (needs the sys.path set-up above)
from megatron_zh.model import GPT2Config, GPT2Model  # noqa: E402 (needs the sys.path set-up above)

EOD, PAD = 102, 0


def ours(model, prompts, new_tokens):
    config = GenerationConfig(new_tokens, SamplingConfig(greedy=True), stop_at_eod=False)
    out = [[] for _ in prompts]
    for index, token in generate_token_ids(model, prompts, config, eod_id=EOD, pad_id=PAD):
        out[index].append(token)
    return out


@torch.inference_mode()
def full_recompute(model, prompts, new_tokens):
    ids = torch.tensor(prompts, device=model.embedding.word_embeddings.weight.device)  # equal lengths
    for _ in range(new_tokens):
        window = ids[:, -model.config.max_position_embeddings :]
        ids = torch.cat([ids, model(window).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, len(prompts[0]) :].tolist()


@torch.inference_mode()
def hf_generate(hf, prompts, new_tokens):
    ids = torch.tensor(prompts, device=hf.device)
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=PAD,
    )
    return out[:, ids.shape[1] :].tolist()


def timed(fn, device) -> tuple[float, list]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-distil")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPT2Config.from_preset(args.preset, init_std=0.3)  # wide weights: varied greedy tokens
    model = GPT2Model(config).eval().to(device)
    generator = torch.Generator().manual_seed(1)
    prompts = [
        [101] + torch.randint(672, 7992, (args.prompt_length - 1,), generator=generator).tolist()
        for _ in range(args.batch)
    ]
    runs = {
        "ours (kv cache)": lambda: ours(model, prompts, args.new_tokens),
        "full recompute": lambda: full_recompute(model, prompts, args.new_tokens),
    }
    if not args.skip_hf:
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel(to_hf_config(config)).eval()
        hf.load_state_dict(to_hf_state_dict(model.state_dict(), config))
        hf.to(device)
        runs["hf generate (cache)"] = lambda: hf_generate(hf, prompts, args.new_tokens)

    print(
        f"{args.preset} on {device} ({torch.get_num_threads()} threads): batch {args.batch}, prompt "
        f"{args.prompt_length} tokens, {args.new_tokens} new tokens, greedy fp32, median of {args.repeats}"
    )
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    outputs = {}
    for r in range(args.repeats):
        names = list(runs) if r % 2 == 0 else list(reversed(runs))  # alternate: the machine is shared
        for name in names:
            seconds, outputs[name] = timed(runs[name], device)
            times[name].append(seconds)
    tokens = args.batch * args.new_tokens
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name in runs:
        print(f"  {name:22s} {rate[name]:10.1f} tokens/s   (median {statistics.median(times[name]):.3f} s)")
    first = outputs["ours (kv cache)"]
    for name in runs:
        if name != "ours (kv cache)":
            same = sum(a == b for a, b in zip(first, outputs[name]))
            print(
                f"  ours / {name}: {rate['ours (kv cache)'] / rate[name]:.2f}x   "
                f"(same greedy tokens for {same}/{len(first)} prompts)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
