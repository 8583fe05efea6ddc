"""Aesthetic scorers: one interface, one registry, one factory (`create_scorer`).

Every scorer gives crops a score on NIMA's 1-10 scale (the RL reward is `(score - 1) / 9`).

- ``"default"`` (alias ``"proxy"``): :class:`ProxyAestheticScorer` (`rlhf.scorers.proxy`), a proxy, NOT
  NIMA, built from signals that work offline: subject content, BRISQUE quality, saliency composition and
  exposure. Its module docstring gives the formula.
- ``"nima"``: :class:`NimaScorer` (`rlhf.scorers.nima`), NIMA on a timm backbone; it needs a checkpoint
  (``rayjobs/train_nima.py``) or pyiqa NIMA weights; ``"nima:<timm name>"`` names the backbone.

`rlhf.scorers.registry` holds the interface, `register_scorer` and `create_scorer`; importing this package
imports both scorer modules, which registers them.
"""

from rlhf.scorers.nima import (
    NIMA_BINS,
    NIMA_FORMAT,
    NimaModel,
    NimaScorer,
    load_nima_checkpoint,
    nima_mean_score,
    save_nima_checkpoint,
)
from rlhf.scorers.proxy import ProxyAestheticScorer, ProxyWeights, subject_map
from rlhf.scorers.registry import (
    AestheticScorer,
    Crops,
    create_scorer,
    list_scorers,
    register_scorer,
)

__all__ = [
    "NIMA_BINS",
    "NIMA_FORMAT",
    "AestheticScorer",
    "Crops",
    "NimaModel",
    "NimaScorer",
    "ProxyAestheticScorer",
    "ProxyWeights",
    "create_scorer",
    "list_scorers",
    "load_nima_checkpoint",
    "nima_mean_score",
    "register_scorer",
    "save_nima_checkpoint",
    "subject_map",
]
