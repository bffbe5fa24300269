"""The in-place vLLM push plan (`rollout/vllm_engine._push_plan`), on stand-in models: where a
model's own loader puts each checkpoint tensor, and refusal when it transforms one."""

import torch

from longrl.rollout.vllm_engine import _push_plan


class Fused(torch.nn.Module):
    """vLLM's shapes in small: q/k/v fused into one tensor, a vocabulary padded by one row."""

    def __init__(self, transpose_norm: bool = False):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.zeros(6, 3))
        self.embed = torch.nn.Parameter(torch.zeros(5, 3))  # 4 real rows, 1 padding row
        self.norm = torch.nn.Parameter(torch.zeros(3, 3))
        self.transpose_norm = transpose_norm

    @torch.no_grad()
    def load_weights(self, weights):
        rows = {"q": slice(0, 2), "k": slice(2, 4), "v": slice(4, 6)}
        for name, t in weights:
            if name in rows:
                self.qkv[rows[name]] = t
            elif name == "embed":
                self.embed[:4] = t
            elif name == "norm":
                self.norm.copy_(t.T if self.transpose_norm else t)
            # "head" (tied to the embedding) is skipped, as vLLM skips a tied LM head


def _checkpoint(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"q": (2, 3), "k": (2, 3), "v": (2, 3), "embed": (4, 3), "norm": (3, 3), "head": (4, 3)}
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def test_plan_copies_land_where_the_loader_puts_them():
    model = Fused()
    model.load_weights(_checkpoint(1).items())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = _push_plan(model, {n: t.shape for n, t in _checkpoint(1).items()})
    assert isinstance(plan, dict) and sorted(plan) == ["embed", "k", "norm", "q", "v"]
    for n, p in model.named_parameters():  # finding the plan leaves the weights as they were
        assert torch.equal(p, before[n])
    new = _checkpoint(2)
    for name, t in new.items():
        if name in plan:
            plan[name].copy_(t)
    reference = Fused()
    reference.load_weights(new.items())
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), n


def test_a_transformed_tensor_keeps_the_loader():
    model = Fused(transpose_norm=True)
    reason = _push_plan(model, {n: t.shape for n, t in _checkpoint(1).items()})
    assert reason == "norm is written in a form other than a copy of checkpoint tensors"
