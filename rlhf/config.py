"""Typed stage configs and their command lines: one dataclass per stage, one flag per field.

A field's help text lives in its metadata (``field(default=..., metadata={"help": "..."})``), so
``photographer <stage> --help`` documents every hyperparameter from one place. Validation lives in
each dataclass's ``__post_init__`` so bad settings fail before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RESULTS_DIR = Path("results")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) for annotations like `int`, `str | None`, `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field_name` flag per dataclass field (booleans get --x / --no-x)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kw: dict[str, Any] = {"help": f"{f.metadata.get('help', '')} (default: {default!r})",
                              "default": argparse.SUPPRESS}
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


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    add_dataclass_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def run_dir(out: str | None, stage: str) -> Path:
    """The run folder: `out` when given, else results/<stage>-<time>/ (created)."""
    path = Path(out) if out else RESULTS_DIR / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def save_config(cfg: Any, folder: Path) -> Path:
    """Write what was asked beside the outputs (config.json)."""
    path = Path(folder) / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")
    return path
