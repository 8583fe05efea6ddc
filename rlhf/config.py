"""Typed run configs and their command lines: one dataclass per command, composed of shared parts.

A command's config holds its parts as fields (``env: CropEnvConfig``, ``ppo: PPOSettings``); the
command line flattens them, one ``--name`` flag per leaf field, so a flag's name is its field's name
(unique across the parts) and its help is the field's metadata help. Validation lives in each
dataclass's ``__post_init__`` so bad settings fail before any work starts.

Every config.json a run writes carries ``config_version``; ``load_run_config`` upgrades an older one
through ``migrate`` so readers see one shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RESULTS_DIR = Path("results")
CONFIG_VERSION = 2


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) for annotations like `int`, `str | None`, `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _is_part(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaf_fields(cls: type, defaults: Any = None, path: tuple[str, ...] = (), note: Any = None
                ) -> Iterator[tuple[tuple[str, ...], dataclasses.Field, Any, type, str | None]]:
    """(path, field, default, type, default note) for every flag-bearing field, parts flattened.

    A part's default comes from its parent's default instance, so a stage's own choices (e.g. stage 1's
    features) show as the flag's default. A part field's metadata ``help_default`` (a string, or a
    dict by leaf name) replaces the printed default of the leaves below it.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if _is_part(hints[f.name]):
            sub = f.metadata.get("help_default", note)
            yield from leaf_fields(hints[f.name], default, (*path, f.name), sub)
            continue
        shown = note.get(f.name) if isinstance(note, dict) else note
        yield (*path, f.name), f, default, hints[f.name], f.metadata.get("help_default", shown)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field_name` flag per leaf field (booleans get --x / --no-x); unset flags stay out of the
    parsed namespace (argparse.SUPPRESS), so the namespace says which fields were given."""
    seen: dict[str, tuple[str, ...]] = {}
    for path, f, default, hint, shown in leaf_fields(cls):
        if f.name in seen:
            raise TypeError(f"{cls.__name__}: field {f.name!r} at {'.'.join(path)} and {'.'.join(seen[f.name])}: "
                            "a flag needs one field")
        seen[f.name] = path
        tp, is_list = _base_type(hint)
        text = f.metadata.get("help", "")
        if "default" not in text and "required" not in text and default != "":  # once, and only if there is one
            text = f"{text} (default: {shown if shown is not None else _show(default)})"
        kw: dict[str, Any] = {"help": text, "default": argparse.SUPPRESS}
        names = [f"--{f.name}"] + [f"--{a}" for a in f.metadata.get("aliases", ())]
        if f.name != f.name.replace("_", "-"):
            names.append(f"--{f.name.replace('_', '-')}")
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp if tp in (int, float, str) else str
            if is_list:
                # Repeating the flag adds to the list (`--finetune_args=--a --finetune_args=--b=1`).
                kw["nargs"], kw["action"] = "+", "extend"
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(*names, dest=f.name, **kw)


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) or "none"
    return str(value)


def from_flat(cls: type[T], values: dict[str, Any] | None = None, **kw: Any) -> T:
    """A config from leaf field names (as on the command line): `from_flat(BootstrapConfig, timesteps=512)`.

    A part takes its parent's default instance and replaces the named fields, so a stage's choices
    for the others stay.
    """
    aliases = {a: f.name for _, f, *_ in leaf_fields(cls) for a in f.metadata.get("aliases", ())}
    values = {aliases.get(k, k): v for k, v in {**(values or {}), **kw}.items()}
    hints = typing.get_type_hints(cls)
    direct: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if _is_part(hints[f.name]):
            mine = {n: values.pop(n) for n in _leaf_names(hints[f.name]) & set(values)}
            if f.name in values:  # the part itself, given whole
                direct[f.name] = values.pop(f.name)
            elif mine:
                direct[f.name] = from_flat(hints[f.name], mine) if _default(f) is None else \
                    _replace(_default(f), mine)
        elif f.name in values:
            direct[f.name] = values.pop(f.name)
    if values:
        raise TypeError(f"{cls.__name__}: no setting named {', '.join(sorted(values))}")
    return cls(**direct)


def _replace(part: Any, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(type(part))
    nested = {f.name for f in dataclasses.fields(part) if _is_part(hints[f.name])}
    direct = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(part)}}
    for name in nested:
        mine = {n: values[n] for n in _leaf_names(hints[name]) & set(values)}
        if mine:
            direct[name] = _replace(getattr(part, name), mine)
    return dataclasses.replace(part, **direct)


def _leaf_names(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        names |= _leaf_names(hints[f.name]) if _is_part(hints[f.name]) else {f.name}
    return names


def flat_settings(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A saved config's settings (``asdict`` of a `cls`, or its config.json) by flag name, parts flattened.

    A setting that a config.json holds at its top level rather than in its part (written before the
    setting moved into the part) is read there, so an old run folder compares like a new one.
    """
    flat: dict[str, Any] = {}
    for path, f, *_ in leaf_fields(cls):
        node: Any = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and f.name in node:
            flat[f.name] = node[f.name]
        elif f.name in data:
            flat[f.name] = data[f.name]
    return flat


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return from_flat(cls, vars(args))


def parse_config_given(cls: type[T], argv: list[str] | None = None, prog: str | None = None
                       ) -> tuple[T, frozenset[str]]:
    """(config, the leaf field names given on the command line)."""
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    add_dataclass_arguments(parser, cls)
    args = parser.parse_args(argv)
    return config_from_args(cls, args), frozenset(vars(args))


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    return parse_config_given(cls, argv, prog)[0]


def run_dir(out: str | None, stage: str) -> Path:
    """The run folder: `out` when given, else results/<stage>-<time>/ (created)."""
    path = Path(out) if out else RESULTS_DIR / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def save_config(cfg: Any, folder: Path, **extra: Any) -> Path:
    """Write what was asked beside the outputs (config.json, with `config_version` and `extra`)."""
    path = Path(folder) / "config.json"
    data = {"config_version": CONFIG_VERSION, **dataclasses.asdict(cfg), **extra}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# --- old run configs --------------------------------------------------------------------------------

# Version 1 (no config_version) wrote the stage settings flat: the env settings beside the PPO ones,
# and the env RLlib ran in under "env". A setting its "env" lacks did not exist when it ran, so the
# run had the env's behaviour from before the setting: these values, whatever the defaults are now.
V1_ENV_BEFORE = {"grid": 10, "max_steps": 10, "min_area": 0.25, "aspect": "free", "obs_size": 64,
                 "augment_variants": 0, "random_start": 0.0, "saliency": "spectral", "box_mask": False,
                 "features": "none", "colour_cues": False, "lookahead": False}
V1_ENV_FIELDS = ("grid", "max_steps", "min_area", "aspect", "obs_size", "augment_variants", "random_start",
                 "saliency", "box_mask", "features", "colour_cues", "lookahead")
V1_PPO_FIELDS = ("timesteps", "num_env_runners", "num_envs_per_env_runner", "lr", "anneal_lr", "lr_warmup_steps",
                 "gamma", "lambda_", "train_batch_size", "minibatch_size", "num_epochs", "clip_param",
                 "entropy_coeff", "entropy_coeff_final", "vf_loss_coeff", "seed", "sample_timeout_s",
                 "num_gpus_per_learner")

V1_PARTS = {"checkpoints": ("checkpoint_every", "keep_checkpoints"),
            "scoring": ("scorer", "scorer_weights", "service"),
            "stage3": ("policy", "human_reward_model", "ref_kl", "freeze")}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json, upgraded step by step to CONFIG_VERSION."""
    data = dict(data)
    version = int(data.get("config_version", 1))
    if version > CONFIG_VERSION:
        raise ValueError(f"config.json has config_version {version}; this version reads up to {CONFIG_VERSION}")
    if version == 1:
        env = dict(data.get("env") or {k: data[k] for k in V1_ENV_FIELDS if k in data})
        if "images" not in env and "image" in data:
            env["images"] = data["image"]
        env = {**V1_ENV_BEFORE, **env}
        env.setdefault("seed", data.get("seed", 0))
        env.pop("reward", None)
        for key in (*V1_ENV_FIELDS, "image"):
            data.pop(key, None)
        ppo = {"algo": "ppo", **{k: data.pop(k) for k in V1_PPO_FIELDS if k in data}}  # version 1 had PPO only
        parts = {"ppo": ppo, **{name: {k: data.pop(k) for k in keys if k in data} for name, keys in V1_PARTS.items()}}
        data.update(env=env, **{name: part for name, part in parts.items() if part})
        version = 2
    data["config_version"] = version
    return data


def load_run_config(path: str | Path) -> dict[str, Any]:
    """A run's config.json (a file, or the folder holding it), upgraded to CONFIG_VERSION."""
    path = Path(path)
    return migrate(json.loads((path / "config.json" if path.is_dir() else path).read_text()))
