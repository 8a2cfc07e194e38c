"""Shared command-line plumbing: flags derived from a tool's config dataclass, `--config FILE`, `--set key=value`.

A flag is never spelled by hand: `add_config_flags(parser, Config, ["out", "index.kind"])` adds `--out` and
`--index-kind` typed from the fields, with choices from `Literal` types or `setting(choices=...)` and help from the
field's `setting` description; `config_from_args` applies defaults, then --config, then the flags given, then --set.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from typing import Any, Sequence, TypeVar

from dsformer_ros.common.config import load_config

T = TypeVar("T")
FLAG_DEST = "config:"


def _field(cls: type, dotted: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field (and its resolved type) that a dotted name points to."""
    *sections, last = dotted.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if last not in fields:
        raise KeyError(f"{cls.__name__} has no field {last!r}")
    return fields[last], typing.get_type_hints(cls)[last]


def _flag_kwargs(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    spec = field.metadata.get("spec", {})
    kwargs: dict[str, Any] = {"help": spec.get("description")}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) in (list, tuple):
        item = typing.get_args(hint)[0] if typing.get_args(hint) else str
        kwargs["nargs"] = "+"
        kwargs["type"] = item if item in (int, float) else str
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is typing.Literal:
        kwargs["choices"] = list(args)
    elif spec.get("choices"):
        kwargs["choices"] = list(spec["choices"])
    elif hint in (int, float):
        kwargs["type"] = hint
    return kwargs


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, names: Sequence[str], positional: Sequence[str] = ()
) -> None:
    """Add a flag for each named (dotted) field of config dataclass `cls`, the positional ones first, and
    the `--config`/`--set` options."""
    for name in [*positional, *names]:
        field, hint = _field(cls, name)
        kwargs = _flag_kwargs(field, hint)
        if name in positional:
            kwargs["nargs"] = "*" if kwargs.get("nargs") == "+" else "?"
            parser.add_argument(FLAG_DEST + name, metavar=name.replace(".", "_"), default=None, **kwargs)
        else:
            flag = "--" + name.replace(".", "-").replace("_", "-")
            if "action" not in kwargs and "choices" not in kwargs:
                kwargs["metavar"] = name.rsplit(".", 1)[-1].upper()
            if field.default not in (dataclasses.MISSING, None, ""):
                kwargs["help"] = f"{kwargs['help'] or ''} (default {field.default})".strip()
            parser.add_argument(flag, dest=FLAG_DEST + name, default=None, **kwargs)
    add_config_arguments(parser)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `--config` and `--set` options every configurable tool takes."""
    parser.add_argument("--config", help="YAML file with the tool's configuration")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration value (dotted keys for sections); repeatable",
    )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then --config, then the config flags that were given, then --set overrides."""
    given = {k[len(FLAG_DEST):]: v for k, v in vars(args).items() if k.startswith(FLAG_DEST) and v not in (None, [])}
    overrides = [f"{k}={_yaml_scalar(v)}" for k, v in given.items()]
    return load_config(cls, getattr(args, "config", None), overrides + list(getattr(args, "overrides", [])))


def _yaml_scalar(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads N`: torch CPU threads of this process (tools whose config has no `threads` field)."""
    parser.add_argument("--threads", type=int, help="torch CPU threads of this process (default: torch's choice)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply `--threads` when given (importing torch only then)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def setup_logging(verbose: bool = False) -> None:
    """Log lines with time and source, INFO by default."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
