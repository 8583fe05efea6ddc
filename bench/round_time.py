"""How long does one improvement round take with a simulated annotator?

    python bench/round_time.py --bootstrap RUN            # 2 rounds of 25 pairs (the few-pairs path)
    python bench/round_time.py --bootstrap RUN --rounds 4 # and the round that fine-tunes (100 answers)
    python bench/round_time.py                            # trains a small bootstrap first (not timed)

Runs `photographer round --simulate TASTE` on a fresh run folder, round after round, in this process, and
reads each round's wall time and its steps' from round_NNN/state.json. Round 1 asks diverse pairs; later
rounds ask where the newest reward model is least sure; from --finetune_from answers (100, `round`'s
default) a round fine-tunes the bootstrap (stage 3). Target: a round with 25 new pairs in <= 300 s on 2 CPU
cores. Last line: `round_time: rounds=N steered_max_s=... finetuned_max_s=... target_s=300`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayjobs import round as round_cmd  # noqa: E402

TARGET_S = 300.0


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="stage-1 run folder or checkpoint every round starts from (default: train "
                    "one of --bootstrap_timesteps first, not timed)")
    ap.add_argument("--bootstrap_timesteps", type=int, default=8000, help="stage-1 env steps when training here")
    ap.add_argument("--rounds", type=int, default=2, help="rounds to run (default 2)")
    ap.add_argument("--pairs", type=int, default=25, help="new pairs a round (default 25)")
    ap.add_argument("--taste", default="tight", help="the simulated taste that answers (default tight)")
    ap.add_argument("--out", help="run folder (default: a temporary one, removed after)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.out or tmp) / "run"
        if not args.bootstrap:  # as the personalization bench trains one (resumable, in run/../bootstrap)
            from bench.personalization import BenchConfig, bootstrap

            args.bootstrap = bootstrap(BenchConfig(bootstrap_timesteps=args.bootstrap_timesteps, seed=args.seed),
                                       run.parent)
        rows = []
        for k in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            folder = round_cmd.main(["--run", str(run), "--policy", args.bootstrap, "--simulate", args.taste,
                                     "--pairs", str(args.pairs), "--seed", str(args.seed)])
            wall = time.perf_counter() - t0
            state = json.loads((folder / round_cmd.STATE).read_text())
            steps = {s: state[s]["seconds"] for s in round_cmd.STEPS if s in state}
            path = state["policy"]["kind"]  # steered (the few-pairs path) or fine-tuned
            rows.append({"round": k, "answers": k * args.pairs, "path": path, "wall_s": wall, "steps": steps})
            print(f"round {k}: {wall:.0f} s ({path}; " + ", ".join(f"{s} {v:.0f} s" for s, v in steps.items()) + ")",
                  flush=True)
    print("\n| round | answers | policy | wall s | " + " | ".join(round_cmd.STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(round_cmd.STEPS))
    for r in rows:
        print(f"| {r['round']} | {r['answers']} | {r['path']} | {r['wall_s']:.0f} | "
              + " | ".join(f"{r['steps'].get(s, 0):.0f}" for s in round_cmd.STEPS) + " |")
    res = {"rounds": len(rows),
           "steered_max_s": max((r["wall_s"] for r in rows if r["path"] == "steered"), default=float("nan")),
           "finetuned_max_s": max((r["wall_s"] for r in rows if r["path"] != "steered"), default=float("nan")),
           "target_s": TARGET_S}
    print("round_time: " + " ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    return res


if __name__ == "__main__":
    main()
