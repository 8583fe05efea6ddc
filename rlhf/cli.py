"""`photographer <command> [flags]`: one command per stage; flags map 1:1 onto the stage's config.

The seed's form `photographer --stage N ...` also works: stage 1 = bootstrap, 2 = train-reward,
3 = finetune.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "bootstrap": ("rayjobs.bootstrap", "main", "stage 1: PPO crop policy on the aesthetic reward"),
    "crop": ("rayjobs.crop", "main", "crop a photo library with a policy, streaming and resumable (--ray: Ray Data)"),
    "pairs": ("rayjobs.pairs", "main", "stage 2: crop pairs from the policy for annotation"),
    "annotate": ("annotator.app", "main", "stage 2: the Gradio annotation app"),
    "agreement": ("rlhf.agreement", "main", "agreement (percent, Cohen's kappa) between annotators"),
    "export": ("rlhf.agreement", "export_main", "export a store's pairs and answers as pairs JSON"),
    "simulate": ("rlhf.simulated", "main", "answer a store's pairs with a SIMULATED annotator"),
    "train-reward": ("rayjobs.train_reward", "main", "stage 2: train the human reward model on pairs"),
    "finetune": ("rayjobs.finetune", "main", "stage 3: PPO from the bootstrap on the combined reward"),
    "evaluate": ("rayjobs.evaluate", "main", "compare policies on unseen photos; report + pictures"),
    "round": ("rayjobs.round", "main", "one improvement round: pairs, answers, reward model, policy, evaluation"),
    "tune": ("rayjobs.tune_weights", "main", "Ray Tune sweep of the reward weights"),
    "train-nima": ("rayjobs.train_nima", "main", "train a NIMA scorer on AVA-format data"),
    "demo": ("rayjobs.demo", "main", "the whole loop on the bundled photos (what `make demo` runs)"),
}
STAGES = {"1": "bootstrap", "2": "train-reward", "3": "finetune"}


def usage() -> str:
    lines = ["usage: photographer <command> [flags]   (photographer <command> --help for its flags)", ""]
    lines += [f"  {name:<13} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "  photographer --stage {1,2,3} ...   the seed's form: bootstrap | train-reward | finetune"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "--stage" in argv or any(a.startswith("--stage=") for a in argv):
        i = next(i for i, a in enumerate(argv) if a == "--stage" or a.startswith("--stage="))
        value = argv[i].split("=", 1)[1] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else "")
        del argv[i: i + (1 if "=" in argv[i] else 2)]
        if value not in STAGES:
            sys.exit(f"photographer: --stage must be 1, 2 or 3, got {value!r}")
        argv = [STAGES[value], *argv]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        sys.exit(f"photographer: unknown command {cmd!r}\n\n{usage()}")
    module, func, _ = COMMANDS[cmd]
    try:
        rc = getattr(importlib.import_module(module), func)(rest)
    except (ValueError, FileNotFoundError) as e:
        # Bad settings and missing inputs: one clear line, not a traceback.
        if os.environ.get("PHOTOGRAPHER_DEBUG"):
            raise
        sys.exit(f"photographer {cmd}: error: {e}")
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
