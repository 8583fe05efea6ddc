"""Training the head on every answered pair, with held-out figures from cross-validation (folds by photo).

Two ways (RewardTrainConfig.selection): 'bayes', the posterior mean over linear models of a few inputs
each (rlhf.preference.bayes), or 'l1', Bradley-Terry with label noise and L1 by Adam, the penalty and
noise chosen by cross-validated held-out loss."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlhf.preference.bayes import Members, SubsetPosterior, subset_posterior
from rlhf.preference.config import RewardTrainConfig
from rlhf.preference.data import PreferenceDataError, PreferenceExample, pair_features
from rlhf.preference.features import CropFeaturizer
from rlhf.preference.head import FeatureNormaliser, RewardHead, bradley_terry_loss, proximal_l1
from rlhf.preference.model import PreferenceRewardModel


@dataclass
class TrainHistory:
    """Per-epoch curves and the final held-out figures."""

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    n_pairs: int = 0
    n_train: int = 0  # pairs the final head was trained on
    n_val: int = 0  # pairs its held-out figures come from (with cross-validation: every pair, once)
    stopped_early: bool = False
    seconds_featurizing: float = 0.0
    ms_per_crop: float = 0.0
    validation: str = ""  # how held-out figures were measured (k-fold cross-validation or one split)
    l1: float = 0.0  # the --l1 value used
    l1_val_loss: dict[str, float] = field(default_factory=dict)  # best held-out loss of each --l1 value
    l1_rule: str = "min"  # how the --l1 value was chosen (RewardTrainConfig.l1_rule)
    l1_se: float = float("nan")  # standard error of the lowest held-out loss
    l1_choice: str = ""  # why that --l1 value (see _choose_l1)
    label_noise: float = 0.0  # the --label_noise value used
    label_noise_val_loss: dict[str, float] = field(default_factory=dict)  # lowest held-out loss of each value
    selection: str = "l1"  # RewardTrainConfig.selection
    posterior: dict[str, Any] = field(default_factory=dict)  # with bayes: the final posterior (_bayes_summary)

    def final(self) -> dict[str, Any]:
        i = self.epochs.index(self.best_epoch) if self.best_epoch in self.epochs else -1
        return {"val_accuracy": self.val_accuracy[i] if self.n_val else None,
                "val_log_loss": self.val_loss[i] if self.n_val else None,
                "train_loss": self.train_loss[i], "train_accuracy": self.train_accuracy[i],
                "best_epoch": self.best_epoch, "epochs_run": len(self.epochs),
                "stopped_early": self.stopped_early, "n_pairs": self.n_pairs,
                "n_train": self.n_train, "n_val": self.n_val,
                "seconds_featurizing": round(self.seconds_featurizing, 3),
                "ms_per_crop": round(self.ms_per_crop, 2), "validation": self.validation, "l1": self.l1,
                "l1_val_loss": self.l1_val_loss, "l1_rule": self.l1_rule,
                "l1_se": None if math.isnan(self.l1_se) else self.l1_se, "l1_choice": self.l1_choice,
                "label_noise": self.label_noise, "label_noise_val_loss": self.label_noise_val_loss,
                "selection": self.selection, "posterior": self.posterior}


def _accuracy(lead: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(accuracy over the non-tied pairs, NaN when all are ties; their count), `lead` > 0 predicting A. An even
    prediction counts half, as rlhf.evaluation.reward_model_accuracy counts it: an indifferent head scores 0.5,
    not the share of pairs that B won."""
    decided = y != 0.5
    n = int(decided.sum())
    d = lead[decided]
    right = torch.where(d == 0, 0.5, ((d > 0) == (y[decided] > 0.5)).float())
    return (float(right.mean()) if n else float("nan")), n


def _evaluate(head: RewardHead, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, label_noise: float = 0.0
              ) -> tuple[torch.Tensor, float, int]:
    """(BT log-loss per pair (with that label noise), accuracy over non-tied pairs (NaN when all are ties), non-tied pairs)."""
    with torch.no_grad():
        ra, rb = head(xa), head(xb)
        losses = bradley_terry_loss(ra, rb, y, reduction="none", label_noise=label_noise)
        acc, n = _accuracy(ra - rb, y)
    return losses, acc, n


def _evaluate_members(members: Members, xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, float, int]:
    """`_evaluate`'s figures for the posterior predictive of a bayes head's members (what the model predicts
    a choice by: PreferenceRewardModel.preference)."""
    p = members.prefer(xa - xb).double().clamp(1e-12, 1 - 1e-12)
    y = y.double().to(p.device)
    losses = -(y * p.log() + (1 - y) * (1 - p).log())
    acc, n = _accuracy(p - 0.5, y)
    return losses.float(), acc, n


def _pooled(figures: Sequence[tuple[torch.Tensor, float, int]]) -> tuple[torch.Tensor, float]:
    """Held-out figures of several folds (each `_evaluate`'s) pooled: every held-out pair counts once,
    whatever its fold's size. Returns (every pair's loss, accuracy over the non-tied pairs; NaN if none)."""
    losses = torch.cat([f[0].cpu() for f in figures]) if figures else torch.zeros(0)
    decided = sum(f[2] for f in figures)
    return losses, (sum(f[1] * f[2] for f in figures if f[2]) / decided if decided else float("nan"))


@dataclass
class _Data:
    """Standardised features of some pairs: xa, xb (views, n, d) with the annotated view first; y (n,)."""

    xa: torch.Tensor
    xb: torch.Tensor
    y: torch.Tensor


def _standardised(views: Sequence[tuple[np.ndarray, np.ndarray]], y: np.ndarray, train: np.ndarray,
                  held: np.ndarray, fz: CropFeaturizer, cfg: RewardTrainConfig
                  ) -> tuple[FeatureNormaliser, _Data, _Data]:
    """Normaliser fitted on the training pairs' crops as annotated; held-out pairs get no augmented views."""
    norm = FeatureNormaliser.fit(views[0][0][train], fz.embed_dim, cfg.embed_dim, views[0][1][train])

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(norm.transform(a)).to(fz.device)

    def data(idx: np.ndarray, vs: Sequence[tuple[np.ndarray, np.ndarray]]) -> _Data:
        return _Data(torch.stack([tensor(v[0][idx]) for v in vs]), torch.stack([tensor(v[1][idx]) for v in vs]),
                     torch.tensor(y[idx], dtype=torch.float32, device=fz.device))

    return norm, data(train, views), data(held, views[:1])


def _epochs(cfg: RewardTrainConfig, l1: float, train: _Data, held: _Data | None, seed: int, label_noise: float = 0.0
            ) -> Iterator[tuple[RewardHead, tuple[float, float, torch.Tensor, float, int]]]:
    """Train a fresh head epoch by epoch; after each, yield it and (train loss, train accuracy,
    held-out loss per pair, held-out accuracy, held-out non-tied pairs)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = train.y.device
    head = RewardHead(train.xa.shape[-1], cfg.hidden).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    n = len(train.y)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    # Cosine decay to zero: the L1 term's subgradient makes Adam hover around zero weights; a
    # shrinking step lets those settle and the rest converge.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    for _ in range(cfg.epochs):
        head.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        view = torch.randint(train.xa.shape[0], (n,), generator=gen).to(dev)  # one random view of each pair
        for i in range(0, n, cfg.batch_size):
            j = perm[i:i + cfg.batch_size]
            v = view[j]
            loss = bradley_terry_loss(head(train.xa[v, j]), head(train.xb[v, j]), train.y[j], label_noise=label_noise)
            # The penalties are a prior over the whole data set: their weight per pair falls as pairs grow.
            obj = loss + cfg.weight_decay / n * sum((w ** 2).sum() for w in head.weights())
            opt.zero_grad()
            obj.backward()
            opt.step()
            if l1 > 0:
                # On the input layer only: L1 there selects features; on a hidden head's output
                # layer it would also switch off hidden units it still needs.
                proximal_l1(opt, head.weights()[:1], l1 / n)
            sched.step()
        head.eval()
        tr_losses, tr_acc, _ = _evaluate(head, train.xa[0], train.xb[0], train.y, label_noise)
        v_losses, v_acc, v_n = (_evaluate(head, held.xa[0], held.xb[0], held.y, label_noise) if held is not None
                                else (torch.zeros(0), float("nan"), 0))
        yield head, (float(tr_losses.mean()), tr_acc, v_losses, v_acc, v_n)


@dataclass
class _Candidate:
    """One (--label_noise, --l1) pair's held-out curves (pooled over the folds) and its best epoch."""

    l1: float
    label_noise: float = 0.0
    curves: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (
        "train_loss", "train_accuracy", "val_loss", "val_accuracy")})
    best: tuple[float, int] = (math.inf, 0)
    best_state: dict[str, torch.Tensor] | None = None
    best_pair_losses: torch.Tensor | None = None  # each held-out pair's loss at the best epoch
    n_decided: int = 0  # held-out pairs with a strict preference (accuracy counts these)
    stopped_early: bool = False

    @property
    def best_accuracy(self) -> float:
        return self.curves["val_accuracy"][self.best[1] - 1] if self.best[1] else float("nan")


def _folds(examples: Sequence[PreferenceExample], cfg: RewardTrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) pair indices per fold: k folds, or the one --val_fraction split."""
    n = len(examples)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n)
    if cfg.cv_folds >= 2:
        photos = sorted({ex.photo.id for ex in examples})
        if len(photos) >= cfg.cv_folds:
            # Folds by photo: the model will score crops of photos it never saw, and pairs of one
            # photo share what a per-pair split would leak (its colours, its subject's place).
            groups = np.array_split(rng.permutation(len(photos)), cfg.cv_folds)
            fold_of = {photos[j]: f for f, g in enumerate(groups) for j in g}
            parts = [np.array([i for i in range(n) if fold_of[examples[i].photo.id] == f], int)
                     for f in range(cfg.cv_folds)]
        else:
            parts = np.array_split(order, min(cfg.cv_folds, n))
        return [(np.sort(np.setdiff1d(np.arange(n), part)), np.sort(part)) for part in parts]
    n_val = 0 if cfg.val_fraction <= 0 else max(1, round(n * cfg.val_fraction))
    return [(np.sort(order[n_val:]), np.sort(order[:n_val]))]


def _try(cfg: RewardTrainConfig, l1: float, folds: Sequence[tuple[_Data, _Data]], label_noise: float = 0.0
         ) -> _Candidate:
    """Train one head per fold in lockstep; the folds' pooled held-out loss scores the candidate
    (at the last epoch, or with --patience at its best epoch, which early stopping finds)."""
    # Held-out pairs with a strict preference: fixed by the folds, the same every epoch.
    cand = _Candidate(l1, label_noise, n_decided=sum(int((va.y != 0.5).sum()) for _, va in folds))
    since_best = 0
    runs = [_epochs(cfg, l1, tr, va, cfg.seed + i, label_noise) for i, (tr, va) in enumerate(folds)]
    n_val = [len(va.y) for _, va in folds]
    n_train = [len(tr.y) for tr, _ in folds]
    for epoch, results in enumerate(zip(*runs, strict=True), 1):
        cand.curves["train_loss"].append(sum(r[1][0] * k for r, k in zip(results, n_train, strict=True))
                                         / sum(n_train))
        held, val_acc = _pooled([r[1][2:] for r in results])
        cand.curves["val_loss"].append(float(held.mean()) if len(held) else float("nan"))
        accs = [r[1][1] for r in results if not math.isnan(r[1][1])]
        cand.curves["train_accuracy"].append(sum(accs) / len(accs) if accs else float("nan"))
        cand.curves["val_accuracy"].append(val_acc)
        monitored = cand.curves["val_loss"][-1] if sum(n_val) else cand.curves["train_loss"][-1]
        # Without early stopping the epoch used is the newest one.
        if not cfg.patience or monitored < cand.best[0] - 1e-6:
            cand.best = (monitored, epoch)
            cand.best_pair_losses = held
            since_best = 0
            if len(folds) == 1:
                cand.best_state = {k: v.clone() for k, v in results[0][0].state_dict().items()}
        else:
            since_best += 1
        if sum(n_val) and cfg.patience and since_best >= cfg.patience:
            cand.stopped_early = True
            break
    return cand


NO_TASTE = ("no held-out loss or accuracy clearly better than an indifferent head's: an indifferent head "
            "(every crop scored alike; more answers are needed)")


def _choose_l1(cands: Sequence[_Candidate], rule: str) -> tuple[_Candidate, float, str]:
    """The candidate --l1 value by `rule` (RewardTrainConfig.l1_rule), the standard error of the
    lowest held-out loss (nan without held-out pairs: then the lowest training loss wins), and why."""
    best = min(cands, key=lambda c: c.best[0])
    losses = best.best_pair_losses
    if losses is None or len(losses) < 2:
        return best, float("nan"), "the lowest loss"
    se = float(losses.std()) / math.sqrt(len(losses))
    # A penalty so strong that the head is (near) indifferent scores about log 2 whatever the taste:
    # never the tie-break's pick (it would be when every value is weak, e.g. a first round of 50 pairs).
    # The margin is at least float rounding: an all-zero head's losses are log 2 each, so se is 0.
    tied = [c for c in cands if c.best[0] <= best.best[0] + se and c.best[0] < math.log(2) - max(se, 1e-4)]
    if not tied:
        # No loss clearly below an indifferent head's: log-loss cannot rank them. With ties among
        # the answers and label noise it can sit at log 2 while the ranking is right, and the
        # indifferent head would win by loss.
        # Then accuracy decides, if one is above chance at 95 % (one-sided binomial, normal approx.).
        sure = [c for c in cands if c.n_decided and c.best_accuracy > 0.5 + 1.645 * 0.5 / math.sqrt(c.n_decided)]
        if sure:
            return (max(sure, key=lambda c: (c.best_accuracy, c.l1)), se,
                    "no held-out loss clearly below an indifferent head's log 2: the highest held-out accuracy, "
                    "above chance")
        # The answers show no taste this head can find: an indifferent head, not the lowest of losses that
        # differ by noise (such a head ranks crops by whatever the noise favoured: steering by it, or
        # choosing the next pairs by it, would follow that).
        return max(cands, key=lambda c: c.l1), se, NO_TASTE
    if rule == "min":
        return best, se, "min: the lowest held-out loss"
    return (max(tied, key=lambda c: c.l1), se,
            f"1se: the strongest penalty within one standard error, {se:.4f}, of the lowest held-out loss")


def _bayes_head(data: _Data, cfg: RewardTrainConfig) -> tuple[RewardHead, SubsetPosterior]:
    """A linear head whose weights are the posterior mean over sets of <= cfg.max_inputs inputs; every view
    of a pair (augmented copies) shares that pair's weight."""
    views, n, dim = data.xa.shape
    d = (data.xa - data.xb).reshape(views * n, dim)
    post = subset_posterior(d, data.y.repeat(views), cfg.max_inputs, cfg.prior_scales,
                            torch.full((views * n,), 1.0 / views), head_scale=cfg.head_scale,
                            label_noise=cfg.label_noise)
    head = RewardHead(dim, 0).to(data.y.device)
    with torch.no_grad():
        head.net.weight.copy_(post.weight.to(head.net.weight)[None])
    head.eval()
    return head, post


def _bayes_summary(post: SubsetPosterior, names: Sequence[str]) -> dict[str, Any]:
    """The posterior in words: the share of each model size and the most probable input sets."""
    return {"size_share": [round(v, 4) for v in post.size_share],
            "top": [{"inputs": [names[i] for i in s], "share": round(p, 4)} for s, p in post.top]}


def _train_bayes(folds: Sequence[tuple[_Data, _Data]], cfg: RewardTrainConfig, what: str, n: int
                 ) -> tuple[TrainHistory, list[tuple[RewardHead, SubsetPosterior]]]:
    """Held-out figures of the bayes head: one posterior per fold, scored on the fold's held-out pairs; and
    each fold's (head, posterior)."""
    held_figures, train_losses, train_accs, fits = [], [], [], []
    for tr, va in folds:
        head, post = _bayes_head(tr, cfg)
        fits.append((head, post))
        members = post.members()
        tl, ta, _ = _evaluate_members(members, tr.xa[0], tr.xb[0], tr.y)
        train_losses.append(float(tl.mean()))
        train_accs.append(ta)
        if len(va.y):
            held_figures.append(_evaluate_members(members, va.xa[0], va.xb[0], va.y))
    held, val_acc = _pooled(held_figures)
    cv = len(folds) > 1
    hist = TrainHistory(epochs=[1], train_loss=[sum(train_losses) / len(train_losses)],
                        train_accuracy=[sum(train_accs) / len(train_accs)],
                        val_loss=[float(held.mean()) if len(held) else float("nan")],
                        val_accuracy=[val_acc], best_epoch=1, n_pairs=n,
                        n_train=n, n_val=len(held) if not cv else n, validation=what,
                        l1_rule="", l1_choice=f"bayes: the posterior mean over sets of <= {cfg.max_inputs} inputs",
                        selection="bayes")
    return hist, fits


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread within the block, for work on tiny tensors (the head's fit here: a few dozen inputs,
    batches of a few pairs; a policy's rollout, one observation a step): more threads add only a barrier per
    operation, and on a busy machine each barrier waits for a descheduled thread (many times as long)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _model(fz: CropFeaturizer, norm: FeatureNormaliser, head: RewardHead, data: _Data, cfg: RewardTrainConfig,
           hist: TrainHistory, members: Members | None = None) -> PreferenceRewardModel:
    # TRL-style centring (--centring global): an average training crop gets r = 0, i.e. human_score 0.5.
    with torch.no_grad():
        offset = float(torch.cat([head(data.xa[0]), head(data.xb[0])]).mean())
    return PreferenceRewardModel(fz, norm, head, offset, dataclasses.asdict(cfg), hist.final(), cfg.centring, members)


def _finish_bayes(views: Sequence[tuple[np.ndarray, np.ndarray]], y: np.ndarray,
                  prepared: Sequence[tuple[FeatureNormaliser, _Data, _Data]], fz: CropFeaturizer,
                  cfg: RewardTrainConfig, what: str, n: int, seconds_featurizing: float, n_new: int, s0: float,
                  log: Callable[[str], None] | None) -> tuple[PreferenceRewardModel, TrainHistory]:
    """The bayes head: held-out figures from the splits, then the posterior on every pair."""
    with one_torch_thread():
        hist, fits = _train_bayes([(tr, va) for _, tr, va in prepared], cfg, what, n)
        if len(prepared) == 1 and not len(prepared[0][2].y):  # the one split holds every pair: its fit is final
            (norm, data, _), (head, post) = prepared[0], fits[0]
        else:
            every = np.arange(n)
            norm, data, _ = _standardised(views, y, every, every[:0], fz, cfg)
            head, post = _bayes_head(data, cfg)
    hand = fz.feature_names[fz.embed_dim:]  # the normaliser's inputs: PCA components of the embedding, then these
    names = [f"pc{i}" for i in range(norm.out_dim - len(hand))] + list(hand)
    hist.posterior = _bayes_summary(post, names)
    hist.seconds_featurizing = seconds_featurizing
    hist.ms_per_crop = 1000 * (fz.seconds_embedding - s0) / n_new if n_new else 0.0
    if log:
        f = hist.final()
        top = ", ".join(f"{'+'.join(t['inputs']) or 'none'} {t['share']:.2f}" for t in hist.posterior["top"][:3])
        log(f"bayes over sets of <= {cfg.max_inputs} inputs: P(no taste) {post.indifferent_share:.3f}, most "
            f"probable {top}; held-out accuracy {f['val_accuracy']}, log-loss {f['val_log_loss']} on "
            f"{hist.n_val} pairs ({what}); final head from all {n} pairs")
    return _model(fz, norm, head, data, cfg, hist, post.members()), hist


def train_reward_model(examples: Sequence[PreferenceExample], cfg: RewardTrainConfig,
                       featurizer: CropFeaturizer | None = None,
                       log: Callable[[str], None] | None = print) -> tuple[PreferenceRewardModel, TrainHistory]:
    """Fit the head with the Bradley-Terry likelihood on every pair; report cross-validated held-out figures.

    With --selection bayes (the default) the head is the posterior mean over linear models of at most
    --max_inputs inputs (rlhf.preference.bayes), on every pair; the folds (--cv_folds, or one
    --val_fraction split) only measure it. With --selection l1 held-out loss picks --l1, --label_noise
    and the epoch to stop at: with --cv_folds k >= 2 every --l1 value is trained on k folds (each pair
    held out once); the value and epoch with the lowest pooled held-out loss win, and the head is then trained on all
    pairs for that many epochs; the reported held-out figures are the cross-validated ones. With
    --cv_folds 0 one --val_fraction split does the same, and the model keeps the best epoch's
    head trained on the rest.
    """
    if len(examples) < 2:
        raise PreferenceDataError(f"need at least 2 answered pairs to train, got {len(examples)}")
    fz = featurizer or CropFeaturizer(cfg.backbone, cfg.backbone_weights, cfg.device)
    if fz.backbone_name != cfg.backbone:
        raise ValueError(f"featurizer is {fz.backbone_name}, config asks {cfg.backbone}")
    rng = np.random.default_rng(cfg.seed)
    n = len(examples)
    splits = _folds(examples, cfg)
    if not len(splits[0][0]):
        raise PreferenceDataError(f"no training pairs left after holding out {len(splits[0][1])} of {n}")

    t0, n0, s0 = time.perf_counter(), fz.crops_embedded, fz.seconds_embedding
    views = [pair_features(fz, examples)]  # the pairs as annotated come first
    if cfg.augment_mirror:
        views.append(pair_features(fz, examples, mirrored=True))
    if cfg.augment_jitter > 0:
        for _ in range(cfg.jitter_copies):
            views.append(pair_features(fz, examples, jitter=cfg.augment_jitter, rng=rng))
    y = np.array([ex.y for ex in examples], np.float32)
    seconds_featurizing = time.perf_counter() - t0
    n_new = fz.crops_embedded - n0

    prepared = [_standardised(views, y, tr, va, fz, cfg) for tr, va in splits]
    folds = [(tr, va) for _, tr, va in prepared]
    cv = len(splits) > 1
    what = f"{len(splits)}-fold cross-validation" if cv else f"a held-out split of {len(splits[0][1])} pairs"
    if cfg.selection == "bayes":
        return _finish_bayes(views, y, prepared, fz, cfg, what, n, seconds_featurizing, n_new, s0, log)
    by_noise: dict[float, list[_Candidate]] = {}
    for eps in cfg.label_noise:
        for l1 in cfg.l1:
            with one_torch_thread():
                c = _try(cfg, l1, folds, eps)
            by_noise.setdefault(eps, []).append(c)
            i = c.best[1] - 1
            if log:
                log(f"{f'label noise {eps:g}, ' if len(cfg.label_noise) > 1 else ''}l1 {l1:g}: held-out log-loss "
                    f"{c.curves['val_loss'][i]:.4f}, accuracy {c.curves['val_accuracy'][i]:.3f} at epoch {c.best[1]} "
                    f"({what})")
    # The noise model first, by the held-out likelihood of its best penalty (the answers' own verdict on
    # how often they contradict the rest); then the penalty under it, by --l1_rule.
    noise_loss = {eps: min(c.best[0] for c in cs) for eps, cs in by_noise.items()}
    eps = min(noise_loss, key=lambda e: (noise_loss[e], e))
    cands = by_noise[eps]
    if log and len(noise_loss) > 1:
        log(f"label noise {eps:g} chosen (the lowest held-out log-loss, "
            + ", ".join(f"{e:g}: {v:.4f}" for e, v in noise_loss.items()) + ")")
    chosen, se, why = _choose_l1(cands, cfg.l1_rule)
    if log and len(cands) > 1:
        log(f"l1 {chosen.l1:g} chosen ({why})")
    n_val = len(splits[0][1]) if not cv else n
    hist = TrainHistory(epochs=list(range(1, len(chosen.curves["val_loss"]) + 1)), **chosen.curves,
                        best_epoch=chosen.best[1], n_pairs=n, n_train=n if cv else len(splits[0][0]), n_val=n_val,
                        stopped_early=chosen.stopped_early, seconds_featurizing=seconds_featurizing,
                        ms_per_crop=1000 * (fz.seconds_embedding - s0) / n_new if n_new else 0.0,
                        validation=what, l1=chosen.l1, l1_rule=cfg.l1_rule, l1_se=se, l1_choice=why,
                        l1_val_loss={f"{c.l1:g}": c.best[0] for c in cands}, label_noise=eps,
                        label_noise_val_loss={f"{e:g}": v for e, v in noise_loss.items()})

    if cv:
        # The final head sees every pair, for the epochs cross-validation chose.
        every = np.arange(n)
        norm, data, _ = _standardised(views, y, every, every[:0], fz, cfg)
        run = _epochs(cfg, chosen.l1, data, None, cfg.seed, chosen.label_noise)
        with one_torch_thread():
            for _ in range(chosen.best[1]):
                head, _ = next(run)
    else:
        norm, data, _ = prepared[0]
        head = RewardHead(norm.out_dim, cfg.hidden).to(fz.device)
        head.load_state_dict(chosen.best_state)
    head.eval()
    if why == NO_TASTE:
        with torch.no_grad():
            for w in head.weights():
                w.zero_()

    model = _model(fz, norm, head, data, cfg, hist)
    if log:
        f = hist.final()
        log(f"l1 {chosen.l1:g}, {hist.best_epoch} epochs: held-out accuracy {f['val_accuracy']}, "
            f"log-loss {f['val_log_loss']} on {hist.n_val} pairs ({what}); final head trained on "
            f"{hist.n_train} pairs; featurizing {hist.ms_per_crop:.1f} ms/crop")
    return model, hist
