"""Bayesian model averaging over small sets of inputs: the reward head for a taste learnt from a few answers.

A taste usually rests on one or two cues (how tight the crop is, where the subject sits, how warm it
looks), and the person answers a few dozen pairs. Choosing an L1 penalty by cross-validation then rests
on folds of five pairs, whose losses differ by noise. This module instead weighs every model that uses
at most `max_inputs` of the standardised inputs by its evidence:

- prior: every size 0..max_inputs equally likely, every set of that size equally likely within it, and
  within a model weights ~ N(0, s^2), s one of `prior_scales` (0.5, 1, 2, 4 by default), each equally
  likely (inputs are standardised to the spread of within-pair differences: s = 1 is a cue that moves an
  answer's log-odds by about one per typical difference; how strongly a taste's cues move the answers
  differs by taste, and the answers weigh the scales as they weigh the sets);
- likelihood: Bradley-Terry with a share eps of answers flipped (a slip of the key, a change of mind),
  P(A answered better) = eps + (1 - 2 eps) sigma(w . (x_a - x_b)), a tie counting half to each side, eps one
  of `label_noise` (0, 0.1, 0.2 by default), each equally likely. Why: under plain Bradley-Terry (eps = 0) one
  slip on a pair the taste decides clearly costs a set in proportion to the pair's difference, and one
  misclick can hand the posterior to "no taste" after dozens of answers that agreed (docs/experiments.md);
  with eps > 0 it costs at most -log eps, and answers without slips still weigh eps = 0 the most;
- each model's evidence by Laplace's approximation at its maximum a posteriori weights (found by Fisher
  scoring, every model of one size at once), and the head's weights are the posterior mean over sets, each
  set's weights being its MAP under one scale, `head_scale` (1 by default).

Why the head's weights come from one scale: the scales decide which cues the answers rest on, but the
larger ones also fit steeper weights, and the human score sigmoid(r) of a steep head is a step (flat on
both sides of a taste's bend) that a policy's lookahead and stage 3 cannot climb. With the weights at
scale 1 the head ranks as the scale-averaged sets do and keeps the slope the rest of the product was
tuned on (docs/experiments.md, 2026-12-05).

A choice between two crops is predicted by the posterior itself, not by the mean head: P(A better) is each
model's own predictive averaged by its share (`Members.prefer`, the posterior predictive; the most probable
models holding MEMBERS_MASS of the posterior, kept in the model file). Where the posterior is spread over sets
that disagree on a pair, the mean of their weights can side with a steep minority. Each model's own predictive
averages over its weights' Laplace posterior N(w*, H^-1) by MacKay's moderated output,
sigma(w* . d / sqrt(1 + pi v / 8)), v = d' H^-1 d: a model fit to a few answers is less sure on a pair far from
them than its MAP weights say.

The size-0 model (every crop alike) takes part: with answers that show no taste its posterior share is
large and the head shrinks towards indifference by itself. No library fits sparse Bayesian logistic
regression over input sets (scikit-learn's ARD is for regression, and BT pairs are a logistic model of
differences), so the ~60 lines below do it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from rlhf.preference.head import bradley_terry_loss

# Fisher-scoring steps per fit. Without label noise they are Newton's steps on a strictly concave
# log-posterior, reaching 1e-8 in under 15 from w = 0; with it they converge linearly, and 25 leave
# the log evidence within 1e-4 of its limit (weights within 1e-3), far below what moves a posterior share.
NEWTON_STEPS = 25
MODEL_SHARE = 1e-6  # SubsetPosterior.models leaves out models with less posterior share than this
# SubsetPosterior.members keeps the most probable models holding this share of the posterior: the rest, thousands
# of sets each far below a thousandth, move a predicted probability by at most 0.001 together.
MEMBERS_MASS = 0.999


class PosteriorModel(NamedTuple):
    """One (input set, prior scale, label noise) model of the posterior."""

    inputs: tuple[int, ...]  # the standardised inputs it uses
    share: float  # its posterior probability
    weights: torch.Tensor  # (k,) its MAP weights at its own prior scale
    covariance: torch.Tensor  # (k, k) their Laplace covariance, the inverse of the log-posterior's Hessian there


@dataclass
class Members:
    """The posterior's most probable models, packed for prediction: model i uses the standardised inputs
    inputs[i] with weights weights[i] (its MAP at its own prior scale; a set smaller than k padded with
    weight 0), their Laplace covariance covariances[i] (padded with 0; None: predict by the MAP weights alone)
    and has posterior share shares[i] (renormalised over the members kept)."""

    inputs: torch.Tensor  # (M, k) long
    weights: torch.Tensor  # (M, k) float
    shares: torch.Tensor  # (M,) float, summing to 1
    covariances: torch.Tensor | None = None  # (M, k, k) float

    def prefer(self, d: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """P(A better) for each row of d (n, p), the standardised differences x_a - x_b: the posterior
        predictive, each model's moderated Bradley-Terry probability sigma(mu / sqrt(1 + pi v / 8)) (mu = w . d,
        v = d' C d) weighed by its share. It predicts a person's choice better than the mean model's
        sigma(w_mean . d) where the posterior is spread over sets that disagree on a pair (the mean of their
        weights can side with a minority of them); moderating each model adds a little on average
        (docs/experiments.md, 12-06)."""
        d = d.to(self.weights)
        out = []
        for i in range(0, len(d), chunk):
            di = d[i:i + chunk, self.inputs]  # (c, M, k)
            mu = (di * self.weights).sum(-1)
            if self.covariances is not None:
                # v = d' C d term by term: for a member's k <= 2 or 3 inputs, a third of einsum's time here
                c, k = self.covariances, self.inputs.shape[1]
                v = sum(di[..., a] * di[..., b] * c[:, a, b] * (1 if a == b else 2)
                        for a in range(k) for b in range(a, k))
                mu = mu / torch.sqrt(1 + math.pi / 8 * v.clamp_min(0))
            out.append(torch.sigmoid(mu) @ self.shares)
        return torch.cat(out) if out else d.new_zeros(0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"inputs": self.inputs, "weights": self.weights, "shares": self.shares}
        if self.covariances is not None:
            state["covariances"] = self.covariances
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Members:
        cov = state.get("covariances")
        return cls(state["inputs"].long(), state["weights"].float(), state["shares"].float(),
                   None if cov is None else cov.float())


@dataclass
class SubsetPosterior:
    """The posterior over input sets: the mean weight of each input and the share of each model size."""

    weight: torch.Tensor  # (p,) posterior mean of each standardised input's weight
    size_share: list[float]  # posterior probability of sets of 0, 1, ..., max_inputs inputs
    top: list[tuple[tuple[int, ...], float]]  # the most probable input sets and their posterior shares
    # Every model with a share above MODEL_SHARE, the posterior's members for what needs more than the mean
    # (`members`, a choice of pairs to ask).
    models: list[PosteriorModel] = field(default_factory=list)

    def members(self, mass: float = MEMBERS_MASS) -> Members:
        """The most probable models holding `mass` of the posterior, packed for `Members.prefer`."""
        ranked = sorted(self.models, key=lambda m: m.share, reverse=True)
        cum = torch.tensor([m.share for m in ranked], dtype=torch.float64).cumsum(0)
        keep = ranked[:int(torch.searchsorted(cum, mass * float(cum[-1]))) + 1]
        sizes = [len(m.inputs) for m in keep]
        k_max = max(1, *sizes)
        inputs, weights = torch.zeros(len(keep), k_max, dtype=torch.long), torch.zeros(len(keep), k_max)
        covs = torch.zeros(len(keep), k_max, k_max)
        for k in set(sizes) - {0}:  # the models of one size at once (size 0 stays all padding)
            rows = [i for i, n in enumerate(sizes) if n == k]
            inputs[rows, :k] = torch.tensor([keep[i].inputs for i in rows], dtype=torch.long)
            weights[rows, :k] = torch.stack([keep[i].weights for i in rows])
            covs[rows, :k, :k] = torch.stack([keep[i].covariance for i in rows])
        shares = torch.tensor([m.share for m in keep], dtype=torch.float64)
        return Members(inputs, weights, (shares / shares.sum()).float(), covs)

    @property
    def indifferent_share(self) -> float:
        """Posterior probability that the answers show no taste (the model that scores every crop alike)."""
        return self.size_share[0]


def _score_terms(z: torch.Tensor, y: torch.Tensor, label_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer, at margins z: the log-likelihood's derivative in z and its Fisher information in z, for
    P(A answered better) = eps + (1 - 2 eps) sigma(z), eps = label_noise (the likelihood of bradley_terry_loss)."""
    s = torch.sigmoid(z)
    if label_noise == 0:  # the same, without dividing by s (1 - s), which is 0 where the sigmoid saturates
        return y - s, s * (1 - s)
    p = label_noise + (1 - 2 * label_noise) * s
    dp = (1 - 2 * label_noise) * s * (1 - s)
    return dp * (y - p) / (p * (1 - p)), dp * dp / (p * (1 - p))


def _map_fits(x: torch.Tensor, y: torch.Tensor, w8: torch.Tensor, prior_scale: float, label_noise: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAP weights (M, k), Laplace log evidence (M,) and Laplace covariance (M, k, k) of M logistic models at
    once: x (M, n, k) input differences, y (n,) targets in [0, 1], w8 (n,) pair weights, a share label_noise of
    answers flipped.

    Fisher scoring: Newton's method with the expected Hessian (the same as the Hessian at label_noise 0). With
    flipped answers the log-likelihood is not concave, but its Fisher information is positive definite, so
    every step solves a well-posed system, and the evidence's Laplace term uses it too."""
    m, _, k = x.shape
    prec = torch.eye(k, dtype=x.dtype) / prior_scale ** 2
    w = torch.zeros(m, k, dtype=x.dtype)
    for _ in range(NEWTON_STEPS):
        dz, info = _score_terms(torch.einsum("mnk,mk->mn", x, w), y, label_noise)
        grad = w @ prec - torch.einsum("mnk,mn->mk", x, dz * w8)
        hess = torch.einsum("mnk,mn,mnj->mkj", x, info * w8, x) + prec
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        w = w - step
        if float(step.abs().max()) < 1e-8:
            break
    z = torch.einsum("mnk,mk->mn", x, w)
    _, info = _score_terms(z, y, label_noise)
    loglik = -(w8 * bradley_terry_loss(z, torch.zeros_like(z), y.expand_as(z), reduction="none",
                                       label_noise=label_noise)).sum(1)
    hess = torch.einsum("mnk,mn,mnj->mkj", x, info * w8, x) + prec
    # log p(y | w*) + log N(w* | 0, s^2 I) + (k/2) log 2 pi - (1/2) log det H: the 2 pi terms cancel.
    log_ev = loglik - 0.5 * (w * w).sum(1) / prior_scale ** 2 - k * math.log(prior_scale) - 0.5 * torch.logdet(hess)
    return w, log_ev, torch.linalg.inv(hess)


def subset_posterior(d: torch.Tensor, y: torch.Tensor, max_inputs: int, prior_scales: Sequence[float],
                     pair_weight: torch.Tensor | None = None, top: int = 5,
                     head_scale: float = 0.0, label_noise: Sequence[float] = (0.0,)) -> SubsetPosterior:
    """The posterior over sets of at most `max_inputs` of the columns of d (n, p), the standardised
    differences x_a - x_b of n answered pairs, with targets y (1: A better, 0: B better, 0.5: a tie), each
    set's weights under a Gaussian prior of one of `prior_scales`, a share of the answers flipped of one of
    `label_noise` (each value of both equally likely); pair_weight (n,) counts each pair (default 1:
    augmented copies of a pair share one pair's weight). The mean weight averages each set's MAP weights
    under `head_scale` (0, the default: each scale's own fit)."""
    d, y = d.double().cpu(), y.double().cpu()
    n, p = d.shape
    w8 = torch.ones(n, dtype=d.dtype) if pair_weight is None else pair_weight.double().cpu()
    scales = [float(s) for s in prior_scales]
    noises = [float(e) for e in label_noise]
    # Size 0: every crop scored alike, each answer at probability 1/2 (no weights, so no scale).
    ev = [torch.tensor([-math.log(2) * float(w8.sum())], dtype=d.dtype)]
    sets: list[list[tuple[int, ...]]] = [[()]]
    weights: list[torch.Tensor] = [torch.zeros(1, 0, dtype=d.dtype)]
    own: list[torch.Tensor] = [weights[0]]  # each model's weights at its own scale
    covs: list[torch.Tensor] = [torch.zeros(1, 0, 0, dtype=d.dtype)]  # and their Laplace covariance
    for k in range(1, min(max_inputs, p) + 1):
        subs = list(itertools.combinations(range(p), k))
        x = d[:, subs].permute(1, 0, 2)
        needed = set(scales) | ({head_scale} if head_scale else set())
        for eps in noises:
            fits = {scale: _map_fits(x, y, w8, scale, eps) for scale in needed}
            for scale in scales:
                # uniform within a size, over the scales and over the noise levels
                ev.append(fits[scale][1] - math.log(len(subs)) - math.log(len(scales)) - math.log(len(noises)))
                sets.append(subs)
                weights.append(fits[head_scale or scale][0])
                own.append(fits[scale][0])
                covs.append(fits[scale][2])
    post = torch.softmax(torch.cat(ev), 0)
    mean = torch.zeros(p, dtype=d.dtype)
    shares = [0.0] * (min(max_inputs, p) + 1)
    by_set: dict[tuple[int, ...], float] = {}
    models = []
    at = 0
    for subs, w, w_own, cov in zip(sets, weights, own, covs, strict=True):
        pk = post[at:at + len(subs)]
        models += [PosteriorModel(subs[i], float(pk[i]), w_own[i].float(), cov[i].float())
                   for i in torch.nonzero(pk > MODEL_SHARE).flatten().tolist()]
        shares[len(subs[0])] += float(pk.sum())
        if subs[0]:
            mean.index_add_(0, torch.tensor(subs).reshape(-1), (pk[:, None] * w).reshape(-1))
        for s, v in zip(subs, pk.tolist(), strict=True):
            by_set[s] = by_set.get(s, 0.0) + v
        at += len(subs)
    best = sorted(by_set.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return SubsetPosterior(mean.float(), shares, best, models)
