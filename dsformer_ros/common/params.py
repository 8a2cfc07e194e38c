"""Settings declared once: a config field carries its description, bounds, choices and section in its metadata.

Validation (`check_fields`), the ROS parameter declarations and the commented parameter file all follow from these
fields, in the spirit of generate_parameter_library: nothing about a parameter is written twice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dsformer_ros.common.config import ConfigError

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Spec:
    """One setting: its name, default, description, inclusive bounds (high None: unbounded), allowed strings and
    file section."""

    name: str
    default: Scalar
    description: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[str, ...] = ()
    section: str = ""

    def check(self, value: Any) -> None:
        """Raise ConfigError naming the setting when `value` is outside its bounds or choices."""
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name}: {value!r} is not one of {', '.join(self.choices)}")
        if self.low is not None and not value >= self.low:
            raise ConfigError(f"{self.name}: must be >= {self.low}, got {value}")
        if self.high is not None and not value <= self.high:
            raise ConfigError(f"{self.name}: must be <= {self.high}, got {value}")

    def range_text(self) -> str:
        """The bounds or choices as a short text for comments ('' when free)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.low is not None:
            return f"{self.low}..{'' if self.high is None else self.high}"
        return ""


def setting(
    default: Scalar,
    description: str,
    *,
    low: float | int | None = None,
    high: float | int | None = None,
    choices: tuple[str, ...] = (),
    section: str = "",
) -> Any:
    """A dataclass field whose metadata declares the setting (use as `name: type = setting(...)`)."""
    return dataclasses.field(
        default=default,
        metadata={"spec": dict(description=description, low=low, high=high, choices=choices, section=section)},
    )


def specs(cls: type) -> tuple[Spec, ...]:
    """The declared settings of dataclass `cls`, in field order (fields without `setting` metadata are skipped)."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("spec")
        if meta is not None:
            out.append(Spec(name=f.name, default=f.default, **meta))
    return tuple(out)


def check_fields(obj: Any) -> None:
    """Check every declared setting of dataclass instance `obj` against its bounds and choices."""
    for spec in specs(type(obj)):
        spec.check(getattr(obj, spec.name))
