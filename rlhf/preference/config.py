"""Settings of reward-model training (`photographer train-reward`)."""

from __future__ import annotations

from dataclasses import dataclass, field

# How rewards are centred (see PreferenceRewardModel).
CENTRINGS = ("photo", "global")
# How the head's inputs and weights are chosen (RewardTrainConfig.selection).
SELECTIONS = ("bayes", "l1")
# How held-out loss picks the L1 penalty (RewardTrainConfig.l1_rule).
L1_RULES = ("1se", "min")


@dataclass
class RewardTrainConfig:
    """Train the human reward model (per-crop score, Bradley-Terry) on crop preference pairs."""

    preference_data: str = field(default="", metadata={
        "help": "pairs JSON file or preference store (SQLite) with answered pairs"})
    out: str | None = field(default=None, metadata={
        "help": "run folder; None = results/reward-<time>/"})
    annotator: str | None = field(default=None, metadata={
        "help": "use this annotator's answers only; None = the store's consensus (majority vote) of all answers"})
    selection: str = field(default="bayes", metadata={"choices": SELECTIONS, "help": (
        "how the head's inputs and weights are found. 'bayes' = the posterior mean over every linear model of "
        "at most --max_inputs inputs, each weighed by its Bradley-Terry evidence (rlhf.preference.bayes), and a "
        "choice between two crops predicted by that posterior itself: no penalty to choose, so it holds up with "
        "a few dozen answers; 'l1' = a head trained by Adam with the L1 "
        "penalty and --label_noise chosen by cross-validation (--l1, --l1_rule, --epochs ...), "
        "needed for a hidden layer. Either way --cv_folds measures the held-out figures")})
    max_inputs: int = field(default=2, metadata={"help": (
        "with --selection bayes: most inputs one model of the average uses (a taste resting on more cues is "
        "approached by the average of models on a few each); 3 weighs about 20 times as many models")})
    prior_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0], metadata={"help": (
        "with --selection bayes: the standard deviations the Gaussian prior on a model's weights over "
        "standardised inputs may have (1: a typical within-pair difference of one input moves an answer's "
        "log-odds by about one), equally likely a priori: the posterior averages over them as over input "
        "sets, so the answers say how strongly the cues move them (a taste's sets are found from fewer answers)")})
    head_scale: float = field(default=1.0, metadata={"help": (
        "with --selection bayes: each input set's weights in the head are its MAP under this prior scale, "
        "whatever scales weigh the sets (0 = each scale's own fit). It sets the human score's steepness: "
        "larger scales fit steeper weights, and a steep sigmoid(r) is a step that a lookahead and stage 3 "
        "cannot climb (docs/design.md)")})
    epochs: int = field(default=50, metadata={
        "help": "with --selection l1: maximum training epochs over the pairs"})
    lr: float = field(default=0.03, metadata={
        "help": "with --selection l1: Adam learning rate of the head (cosine-decayed to 0)"})
    l1: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0], metadata={
        "help": "with --selection l1: L1 penalty on the head's input weights (proximal steps): objective = "
                "mean BT loss + (l1*|w|_1 + weight_decay*|w|^2) / n_train_pairs; selects the few features a "
                "taste rests on. Several values: --l1_rule picks one by held-out loss (tastes differ: one "
                "resting on a single cue wants a strong penalty, one that bends wants a weaker one)"})
    l1_rule: str = field(default="1se", metadata={"choices": L1_RULES, "help": (
        "with --selection l1: how held-out loss picks --l1: '1se' = the strongest penalty whose held-out loss "
        "lies within one standard error of the lowest (Breiman's one-standard-error rule, glmnet's "
        "lambda.1se); 'min' = the lowest loss. With a hundred noisy pairs two losses that close are a tie, and "
        "the weaker penalty keeps features that only happen to go with the answers")})
    label_noise: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2], metadata={
        "help": "share of answers taken to be flipped (slips, changes of mind): the likelihood of an answer is "
                "eps + (1 - 2 eps) * sigma(r_a - r_b) (bradley_terry_loss), so one answer against the rest, even on "
                "a pair the head is sure of, cannot undo what the others taught. With --selection bayes every "
                "value is equally likely a priori and the answers weigh them, as they weigh the prior scales; "
                "with l1 the one whose best --l1 has the lowest cross-validated held-out log-loss wins"})
    weight_decay: float = field(default=1.0, metadata={
        "help": "with --selection l1: L2 penalty on the head's weights (scaled by 1/n_train_pairs like l1)"})
    batch_size: int = field(default=16, metadata={"help": "with --selection l1: pairs per gradient step"})
    cv_folds: int = field(default=5, metadata={
        "help": "k-fold cross-validation, folds by photo (by pair when there are fewer photos than folds; "
                "seeded): the held-out accuracy and log-loss reported. With --selection l1 the held-out loss "
                "pooled over the folds also picks --label_noise and --l1 (and with --patience the epoch to "
                "stop at); the head is then trained on ALL pairs. 0 = one held-out split of --val_fraction"})
    val_fraction: float = field(default=0.2, metadata={
        "help": "with --cv_folds 0: fraction of pairs held out (split by pair, seeded) for the metrics "
                "(with --selection l1 also for early stopping, the head then trained on the rest only)"})
    patience: int = field(default=0, metadata={
        "help": "with --selection l1: early stopping after this many epochs without a better held-out loss "
                "(pooled over the folds), using the best epoch. 0 = train every epoch: early stopping tends "
                "to stop a head before L1 has picked the few features a taste rests on"})
    seed: int = field(default=0, metadata={"help": "seed of the split, initialisation and augmentation"})
    backbone: str = field(default="efficientnet_lite0", metadata={
        "help": "timm model name of the frozen network whose last feature map a crop's embedding is RoI-pooled "
                "from; the shipped Lite0's map comes with each photo's context, another network is run once per photo"})
    backbone_weights: str | None = field(default=None, metadata={
        "help": "local weights file for the backbone (default: the shipped EfficientNet-Lite0 ImageNet weights)"})
    embed_dim: int = field(default=4, metadata={
        "help": "PCA components of the crop embedding fed to the head (0 = none, -1 = all); few, since with a "
                "hundred pairs more components let in features that fit the answered photos only"})
    hidden: int = field(default=0, metadata={
        "help": "hidden units of the head (0 = linear head); a hidden layer needs --selection l1"})
    augment_mirror: bool = field(default=False, metadata={
        "help": "add mirrored pairs (mirrored pixels and geometry); wrong for left/right tastes, so off"})
    augment_jitter: float = field(default=0.0, metadata={
        "help": "box jitter as a fraction of box size (e.g. 0.03); 0 = off"})
    jitter_copies: int = field(default=2, metadata={"help": "jittered copies of each pair when jitter is on"})
    centring: str = field(default="photo", metadata={"choices": CENTRINGS, "help": (
        "what r is centred on before human_score = sigmoid(r): 'photo' = the mean r of the photo's own "
        "reference crops (whole photo + 3x3 grid of 0.6-size crops), so 0.5 means 'as good as this photo's "
        "typical framing'; 'global' = the mean r of the training crops (TRL's reward centring). Pairs "
        "compare crops of one photo, so they fix r only up to a constant per photo: with 'global' that "
        "constant pushes whole photos into sigmoid's flat tails, where stage 3 sees no difference "
        "between crops")})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda)"})

    def __post_init__(self) -> None:
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.selection == "bayes" and self.hidden:
            raise ValueError("--selection bayes fits a linear head; a hidden layer needs --selection l1")
        if isinstance(self.prior_scales, int | float):
            self.prior_scales = [float(self.prior_scales)]
        self.prior_scales = [float(v) for v in self.prior_scales]
        if self.max_inputs < 1 or not self.prior_scales or min(self.prior_scales) <= 0 or self.head_scale < 0:
            raise ValueError(f"max_inputs must be >= 1, every prior scale > 0 and head_scale >= 0, got "
                             f"{self.max_inputs}, {self.prior_scales}, {self.head_scale}")
        if self.l1_rule not in L1_RULES:
            raise ValueError(f"l1_rule must be one of {L1_RULES}, got {self.l1_rule!r}")
        if isinstance(self.l1, int | float):
            self.l1 = [float(self.l1)]
        self.l1 = [float(v) for v in self.l1]
        if isinstance(self.label_noise, int | float):
            self.label_noise = [float(self.label_noise)]
        self.label_noise = [float(v) for v in self.label_noise]
        if not self.label_noise or not all(0 <= v < 0.5 for v in self.label_noise):
            raise ValueError(f"label_noise must be one or more values in [0, 0.5), got {self.label_noise}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or not self.l1 or min(self.l1) < 0:
            raise ValueError(f"lr must be > 0, l1 (one or more values) and weight_decay >= 0; got lr={self.lr}, "
                             f"l1={self.l1}, weight_decay={self.weight_decay}")
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ValueError(f"cv_folds must be 0 (one held-out split) or >= 2, got {self.cv_folds}")
        if (self.selection == "l1" and self.cv_folds == 0 and self.val_fraction == 0
                and (len(self.l1) > 1 or len(self.label_noise) > 1)):
            raise ValueError(f"several --l1 {self.l1} or --label_noise {self.label_noise} values need held-out "
                             "pairs to choose between them: use --cv_folds >= 2 or --val_fraction > 0, or give "
                             "one value of each")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience < 0 or self.hidden < 0 or self.jitter_copies < 0:
            raise ValueError("patience, hidden and jitter_copies must be >= 0")
        if self.embed_dim < -1:
            raise ValueError(f"embed_dim must be -1 (all), 0 (none) or a positive count, got {self.embed_dim}")
        if not 0.0 <= self.augment_jitter <= 0.2:
            raise ValueError(f"augment_jitter is a small fraction of the box size in [0, 0.2], got {self.augment_jitter}")

