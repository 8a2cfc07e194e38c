"""Shared command-line plumbing: each tool's config dataclass from `--config FILE` and `--set key=value`."""
from __future__ import annotations

import argparse
import logging
from typing import TypeVar

from dsformer_ros.common.config import load_config

T = TypeVar("T")


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


def config_from_args(cls: type[T], args: argparse.Namespace, **direct: object) -> T:
    """Defaults, then --config, then direct flags that were given (not None), then --set overrides."""
    overrides = [f"{k}={_yaml_scalar(v)}" for k, v in direct.items() if v is not None]
    return load_config(cls, getattr(args, "config", None), overrides + list(getattr(args, "overrides", [])))


def _yaml_scalar(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def setup_logging(verbose: bool = False) -> None:
    """Log lines with time and source, INFO by default."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
