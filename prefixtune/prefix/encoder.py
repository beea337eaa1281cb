"""P and its reparameterisation P = MLP(P') (Li & Liang, section 4.3)."""

from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    """Produces one stream's prefix P, a (L, width) matrix.

    With `reparam` the trained parameter is P' (L x k), mapped by Linear(k, h), tanh, Linear(h,
    width); without it P itself is trained. `width` is layers * 2 * kv_heads * head_dim for
    key/value prefixes, or the model's hidden size for embedding-only prefixes.
    """

    def __init__(self, length: int, width: int, reparam: bool, dim: int, hidden: int) -> None:
        super().__init__()
        self.length, self.width, self.reparam = length, width, reparam
        if reparam:
            self.p_prime = nn.Parameter(torch.randn(length, dim))
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.p = nn.Parameter(torch.randn(length, width))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.p_prime) if self.reparam else self.p

    @torch.no_grad()
    def fit(self, target: torch.Tensor) -> float:
        """Make P equal `target` (L x width); returns ||P - target|| / ||target||.

        With the MLP, P' and the first layer keep their random values and the last layer is
        solved by least squares on [tanh(W1 P' + b1), 1]: exact (up to float error) whenever
        h + 1 >= L, and the minimum-norm solution, so no weight is made large.
        """
        target = target.to(self.parameters().__next__())
        if not self.reparam:
            self.p.copy_(target)
        else:
            hidden = self.mlp[1](self.mlp[0](self.p_prime))
            design = torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=1).double()
            solution = torch.linalg.lstsq(design.cpu(), target.double().cpu(), driver="gelsd")
            w = solution.solution.to(design.device)
            self.mlp[2].weight.copy_(w[:-1].T.to(target.dtype))
            self.mlp[2].bias.copy_(w[-1].to(target.dtype))
        return float((self() - target).norm() / target.norm().clamp_min(1e-12))
