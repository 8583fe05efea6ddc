"""The head on the features: the normaliser in front of it, the head, and its loss and L1 step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


class FeatureNormaliser:
    """PCA of the embedding block (fitted on training crops), centring and scaling of every feature."""

    def __init__(self, n_embed: int, components: np.ndarray, embed_mean: np.ndarray,
                 mean: np.ndarray, std: np.ndarray):
        self.n_embed = n_embed
        self.components = components.astype(np.float32)  # (k, n_embed)
        self.embed_mean = embed_mean.astype(np.float32)
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, n_embed: int, embed_dim: int, x_other: np.ndarray | None = None
            ) -> FeatureNormaliser:
        """Fit on training crops `x`; with `x_other` (the other crop of each pair, row for row) the
        scale is the spread of within-pair differences rather than of crops.

        Bradley-Terry sees only r_a - r_b of two crops of one photo. A feature such as warmth
        varies far more between photos than between two crops of one photo, so scaling by its
        spread over crops would shrink exactly the differences the person judged, and the
        penalty would then silence it. Scaling by the within-pair spread puts every feature on
        the footing the loss sees.
        """
        both = x if x_other is None else np.concatenate([x, x_other])
        emb = both[:, :n_embed].astype(np.float64)
        emb_mean = emb.mean(0)
        k = n_embed if embed_dim == -1 else min(embed_dim, n_embed, max(len(both) - 1, 0))
        if k > 0 and embed_dim != -1:
            _, _, vt = np.linalg.svd(emb - emb_mean, full_matrices=False)
            comps = vt[:k]
        elif k > 0:
            comps = np.eye(n_embed)
        else:
            comps = np.zeros((0, n_embed))

        def reduce(a: np.ndarray) -> np.ndarray:
            return np.concatenate([(a[:, :n_embed] - emb_mean) @ comps.T, a[:, n_embed:]], axis=1)

        reduced = reduce(both)
        spread = reduced.std(0) if x_other is None else (reduce(x) - reduce(x_other)).std(0)
        # A feature that never differs carries nothing; dividing by ~0 would blow it up.
        spread = np.where(spread > 1e-6, spread, 1.0)
        return cls(n_embed, comps, emb_mean, reduced.mean(0), spread)

    @property
    def out_dim(self) -> int:
        return len(self.mean)

    def transform(self, x: np.ndarray) -> np.ndarray:
        emb = (x[:, :self.n_embed] - self.embed_mean) @ self.components.T
        reduced = np.concatenate([emb, x[:, self.n_embed:]], axis=1)
        return ((reduced - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"n_embed": self.n_embed, "components": torch.from_numpy(self.components),
                "embed_mean": torch.from_numpy(self.embed_mean), "mean": torch.from_numpy(self.mean),
                "std": torch.from_numpy(self.std)}

    @classmethod
    def from_state_dict(cls, s: dict[str, Any]) -> FeatureNormaliser:
        return cls(int(s["n_embed"]), s["components"].numpy(), s["embed_mean"].numpy(),
                   s["mean"].numpy(), s["std"].numpy())


class RewardHead(nn.Module):
    """Standardised features -> r: linear, or one hidden layer when hidden > 0."""

    def __init__(self, in_dim: int, hidden: int = 0):
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.net = (nn.Linear(in_dim, 1) if hidden == 0 else
                    nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)))
        # Start indifferent (r = 0 for every crop): a random start would favour arbitrary features,
        # and with few pairs the penalty would take many steps to undo that. A hidden layer's
        # output weights start small instead (at zero its inputs would get no gradient).
        last = self.net if hidden == 0 else self.net[-1]
        if hidden == 0:
            nn.init.zeros_(last.weight)
        else:
            last.weight.data.mul_(0.1)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def weights(self) -> list[nn.Parameter]:
        """The penalised parameters (biases are free: a bias cancels in r_a - r_b anyway)."""
        return [m.weight for m in self.net.modules() if isinstance(m, nn.Linear)]


def proximal_l1(opt: torch.optim.Adam, weights: Sequence[nn.Parameter], strength: float) -> None:
    """Soft-threshold weights after an Adam step: the L1 part of a proximal-gradient step.

    Adam scales each coordinate's step by 1/sqrt(v); the threshold is scaled the same way, so a
    weight moves by (|gradient| - strength) in Adam's units and stays exactly 0 while its gradient
    is below the L1 strength. (A subgradient of |w| in the loss would only make Adam hover around
    zero, and shrink all weights a little, rather than select features.)
    """
    group = opt.param_groups[0]
    lr, (_, beta2), eps = group["lr"], group["betas"], group["eps"]
    with torch.no_grad():
        for w in weights:
            state = opt.state.get(w)
            if not state:
                continue
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
            # Capped at Adam's own largest step (lr): a weight that has seen no gradient yet
            # (v = 0) shrinks like any other instead of being wiped out at once.
            thresh = (lr * strength / (v_hat.sqrt() + eps)).clamp_max(lr)
            w.copy_(w.sign() * (w.abs() - thresh).clamp_min(0.0))


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
                       label_noise: float = 0.0) -> torch.Tensor:
    """Mean (or per pair: reduction="none") of -[y log p + (1 - y) log(1 - p)], y=0.5 for a tie, where
    p = P(A answered better) = eps + (1 - 2 eps) sigma(r_a - r_b) with eps = label_noise: the person
    answers by the Bradley-Terry model, except that a share eps of answers is flipped (a slip of the
    key, a change of mind). eps = 0 is the plain BT loss. With eps > 0 a pair answered against a
    large margin costs at most -log eps, so a few slips cannot drag the head towards them."""
    d = r_a - r_b
    if label_noise <= 0:
        return nn.functional.binary_cross_entropy_with_logits(d, y, reduction=reduction)
    # log(eps + (1 - 2 eps) sigma(+-d)), from logsigmoid so it stays finite for any margin.
    keep, slip = math.log1p(-2 * label_noise), math.log(label_noise)
    log_p = torch.logaddexp(keep + nn.functional.logsigmoid(d), torch.full_like(d, slip))
    log_q = torch.logaddexp(keep + nn.functional.logsigmoid(-d), torch.full_like(d, slip))
    loss = -(y * log_p + (1 - y) * log_q)
    return loss.mean() if reduction == "mean" else loss

