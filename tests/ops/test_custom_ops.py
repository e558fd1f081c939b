"""The Triton launchers as PyTorch custom ops: their registration passes torch.library.opcheck (schema,
autograd formula, fake tensors, AOTAutograd), and they stay in a torch.compile graph without a break.
Kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from megatron_zh.model import GPT2Config, GPT2Model
from megatron_zh.ops import custom_ops

pytest.importorskip("triton")


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def opcheck(op, args) -> None:
    results = torch.library.opcheck(op, args)
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_norm_ops(dtype):
    x = randn(2, 5, 48, dtype=dtype).requires_grad_()
    weight, bias = (randn(48, seed=s, dtype=dtype).requires_grad_() for s in (1, 2))
    opcheck(custom_ops.layer_norm_fwd, (x, weight, bias, 1e-5))
    _, mean, rstd = custom_ops.layer_norm_fwd(x.detach(), weight.detach(), bias.detach(), 1e-5)
    opcheck(custom_ops.layer_norm_bwd, (randn(2, 5, 48, seed=3, dtype=dtype), x.detach(), weight.detach(), mean, rstd))


def test_layer_norm_weights_in_another_dtype_get_gradients_in_theirs():
    x = randn(3, 40, dtype=torch.bfloat16).requires_grad_()
    weight, bias = (randn(40, seed=s).requires_grad_() for s in (1, 2))  # float32 masters
    opcheck(custom_ops.layer_norm_fwd, (x, weight, bias, 1e-5))
    y, _, _ = custom_ops.layer_norm_fwd(x, weight, bias, 1e-5)
    y.sum().backward()
    assert (y.dtype, x.grad.dtype, weight.grad.dtype, bias.grad.dtype) == (torch.bfloat16, torch.bfloat16) + (
        torch.float32,
    ) * 2


def test_softmax_ops():
    scores = randn(2, 3, 9, 9).requires_grad_()
    opcheck(custom_ops.scaled_causal_softmax_fwd, (scores, 0.3))
    probs = custom_ops.scaled_causal_softmax_fwd(scores.detach(), 0.3)
    opcheck(custom_ops.scaled_causal_softmax_bwd, (probs, randn(2, 3, 9, 9, seed=1), 0.3))


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_attention_ops_on_strided_views_of_a_fused_buffer(dropout_p):
    q, k, v = (t.transpose(1, 2) for t in randn(2, 17, 3, 2, 16).unbind(2))  # the model's layout
    seed = torch.tensor(1234)
    opcheck(custom_ops.causal_attention_fwd, (*(t.clone().requires_grad_() for t in (q, k, v)), seed, 0.25, dropout_p))
    out, lse = custom_ops.causal_attention_fwd(q, k, v, seed, 0.25, dropout_p)
    assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()  # heads merge back without a copy
    args = (randn(2, 2, 17, 16, seed=1), q, k, v, out, lse, seed, 0.25, dropout_p)
    opcheck(custom_ops.causal_attention_bwd, args)


@pytest.mark.parametrize(
    "backend, impl",
    [("torch", "flash"), ("triton", "flash"), ("triton", "softmax")],
    ids=["pytorch-fallbacks", "triton-flash", "triton-softmax"],
)
def test_the_model_compiles_into_one_graph_without_breaks(backend, impl):
    """torch._dynamo.explain over a training forward (dropout on: the attention op's seed is traced too)."""
    torch._dynamo.reset()
    config = GPT2Config.from_preset("gpt2-tiny", attention_impl=impl)
    model = GPT2Model(config, kernel_backend=backend).train()
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(model)(ids, labels=ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    if backend == "triton":
        ops_in_graph = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
        assert "megatron_zh.layer_norm_fwd.default" in ops_in_graph, ops_in_graph


def test_a_compiled_model_with_triton_ops_matches_eager_exactly():
    """fullgraph=True fails on any break; aot_eager runs the same ops, so losses and gradients are identical."""
    config = GPT2Config.from_preset("gpt2-tiny", hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    eager = GPT2Model(config, kernel_backend="triton")
    twin = GPT2Model(config, kernel_backend="triton")
    twin.load_state_dict(eager.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    losses = [run(ids, labels=ids).loss for run in (eager, compiled)]
    for loss in losses:
        loss.backward()
    assert losses[0].item() == losses[1].item()
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=0, rtol=0, msg=name)
