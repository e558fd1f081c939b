"""Training-step throughput on CPU: megatron_zh's GPT2Model vs Hugging Face GPT2LMHeadModel.

Same config and weights, same process and threads, float32, dropout on, one AdamW step per
iteration (forward, backward, optimizer). Steps of the two models alternate, so drift in a
shared machine's load hits both alike. Tokens/s and the ratio are given from each model's best
step (the one least disturbed by other processes) and from its median step.

    python bench/bench_model_cpu.py                # gpt2-distil, seq 128, batch 8
    python bench/bench_model_cpu.py --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_zh.convert.hf.names import to_hf_config, to_hf_state_dict  # noqa: E402 (needs the sys.path set-up above)
from megatron_zh.model import ATTENTION_IMPLS, PRESETS, GPT2Config, GPT2Model  # noqa: E402 (needs the sys.path set-up above)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-distil", choices=sorted(PRESETS))
    p.add_argument(
        "--attention-impl",
        default="flash",
        choices=ATTENTION_IMPLS,
        help="ours; on CPU 'flash' and 'torch' both run scaled_dot_product_attention",
    )
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--adamw",
        default="foreach",
        choices=("foreach", "fused"),
        help="torch.optim.AdamW implementation, the same for both models (foreach: PyTorch's default)",
    )
    return p.parse_args(argv)


class Runner:
    """One model, its AdamW, and a timed training step."""

    def __init__(self, name: str, model: torch.nn.Module, step, adamw: str):
        self.name, self.model, self.step_fn = name, model, step
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, **{adamw: True}
        )
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, tokens: torch.Tensor, timed: bool) -> None:
        start = time.perf_counter()
        loss = self.step_fn(self.model, tokens)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        self.losses.append(loss.item())
        if timed:
            self.times.append(elapsed)


def ours_step(model: GPT2Model, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens[:, :-1], labels=tokens[:, 1:]).loss


def hf_step(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import GPT2LMHeadModel

    config = GPT2Config.from_preset(args.preset, attention_impl=args.attention_impl)
    ours = GPT2Model(config).train()
    hf = GPT2LMHeadModel(to_hf_config(config)).train()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config))
    runners = [Runner("megatron_zh", ours, ours_step, args.adamw), Runner("transformers", hf, hf_step, args.adamw)]

    generator = torch.Generator().manual_seed(args.seed)
    tokens_per_step = args.batch_size * args.seq_length
    print(
        f"preset {args.preset}: {ours.num_parameters() / 1e6:.1f}M parameters, seq {args.seq_length}, "
        f"batch {args.batch_size}, float32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"HF attention '{hf.config._attn_implementation}', ours '{config.attention_impl}', {args.adamw} AdamW"
    )
    total = args.warmup + args.steps
    for i in range(total):
        tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_length + 1), generator=generator)
        # Alternate which model goes first so neither always runs right after the other's step.
        for runner in runners if i % 2 == 0 else runners[::-1]:
            runner.step(tokens, timed=i >= args.warmup)
        done = [f"{r.name} {tokens_per_step / r.times[-1]:.0f} tok/s" for r in runners if r.times]
        print(f"  step {i + 1}/{total} {'(warm-up)' if i < args.warmup else ''} {', '.join(done)}", flush=True)

    # The best step is the least disturbed by other processes on a shared machine; the median
    # shows how much they disturbed this run.
    print(
        f"\n{'model':<14}{'best step (s)':>14}{'tokens/s':>10}{'median step (s)':>17}{'tokens/s':>10}{'final loss':>12}"
    )
    best, median = {}, {}
    for r in runners:
        best[r.name], median[r.name] = min(r.times), statistics.median(r.times)
        print(
            f"{r.name:<14}{best[r.name]:>14.3f}{tokens_per_step / best[r.name]:>10.0f}{median[r.name]:>17.3f}"
            f"{tokens_per_step / median[r.name]:>10.0f}{r.losses[-1]:>12.4f}"
        )
    print(
        f"\nratio megatron_zh / transformers (tokens/s): {best['transformers'] / best['megatron_zh']:.2f}x best step, "
        f"{median['transformers'] / median['megatron_zh']:.2f}x median step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
