"""The few-pairs path's steering settings (rlhf.kept.SteeringSettings): one part, the same flags in every
command that steers, and run folders written before the part existed still resume. No Ray, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayjobs import crop
from rayjobs import round as round_job
from rayjobs.crop import CropConfig
from rayjobs.evaluate import EvalConfig
from rayjobs.pairs import PairsConfig
from rayjobs.round import RoundConfig
from rlhf.config import parse_config, save_config
from rlhf.kept import PHOTO_MIN_KEPT, SteeringSettings

# Each command that steers, with the flags it needs besides the steering ones.
COMMANDS = [(CropConfig, ["--policy", "boot"]), (RoundConfig, ["--run", "me"]),
            (EvalConfig, ["--policies", "boot"]), (PairsConfig, ["--policy", "boot"])]


@pytest.mark.parametrize("cls,argv", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
def test_every_steering_command_has_the_same_flags(cls, argv, capsys):
    cfg = parse_config(cls, [*argv, "--w_human", "0.4", "--photo_min_kept", "0.9"])
    assert cfg.steering == SteeringSettings(w_human=0.4, photo_min_kept=0.9)
    assert parse_config(cls, argv).steering == SteeringSettings(1.0, PHOTO_MIN_KEPT)
    with pytest.raises(SystemExit):
        parse_config(cls, ["--help"])
    text = capsys.readouterr().out
    assert "--w_human" in text and "--photo_min_kept" in text and "candidate crops" in text
    with pytest.raises(ValueError, match=r"--w_human must be in \[0, 1\], got 1.5"):
        parse_config(cls, [*argv, "--w_human", "1.5"])
    with pytest.raises(ValueError, match=r"--photo_min_kept must be in \[0, 1\], got 2.0"):
        parse_config(cls, [*argv, "--photo_min_kept", "2"])


def _flat(folder: Path) -> None:
    """Rewrite folder's config.json as it was written before the steering part: its fields at the top."""
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(data.pop("steering"))
    path.write_text(json.dumps(data))


def test_a_crop_folder_of_the_older_shape_resumes(tmp_path):
    cfg = CropConfig(policy="boot", out=str(tmp_path), resume=True, steering=SteeringSettings(photo_min_kept=0.9))
    save_config(cfg, tmp_path)
    _flat(tmp_path)
    (tmp_path / crop.JOURNAL).write_text("")
    crop.check_resumable(cfg, tmp_path)  # the same settings
    with pytest.raises(ValueError, match="was cropped with --photo_min_kept 0.9"):
        crop.check_resumable(CropConfig(policy="boot", out=str(tmp_path), resume=True), tmp_path)


def test_a_round_of_the_older_shape_goes_on(tmp_path):
    cfg = RoundConfig(run=str(tmp_path), steering=SteeringSettings(w_human=0.3))
    save_config(cfg, tmp_path, round=1, bootstrap="boot")
    _flat(tmp_path)
    round_job._check_same(cfg, tmp_path)
    with pytest.raises(ValueError, match="was started with --w_human 0.3"):
        round_job._check_same(RoundConfig(run=str(tmp_path)), tmp_path)
