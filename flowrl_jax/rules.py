"""Allowed values of config keys. Each component declares its section's rules beside its defaults
(`RULES`, a dict from key to rule, nested like the section); `check` walks a section against them.
A run checks every section this way first, before it reads a weight, writes a demonstration or
compiles a program (trainer/validate.py), so a bad value is one line naming the key, the value and
what is allowed. Rules that relate two keys (pass@j <= k, sizes against the mesh) stay with the
code that knows both; types are ml_collections' (a locked config refuses a value of another type).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of `choices` (strings compared without case when `fold_case`)."""

    choices: tuple
    fold_case: bool = False

    def allows(self, value) -> bool:
        if self.fold_case and isinstance(value, str):
            return value.lower() in {str(c).lower() for c in self.choices}
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def refused(self) -> list:
        """Values this rule refuses (the tests try each)."""
        return ["bogus"]


@dataclasses.dataclass(frozen=True)
class Range:
    """A number in [low, high] (either bound open, or absent), an integer where `integer`, or one
    of the values in `also` (e.g. -1 = "the rest of the devices")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple = ()

    def allows(self, value) -> bool:
        if value in self.also:
            return True
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and value != int(value):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (
            self.high is not None and (value > self.high or (self.high_open and value == self.high))
        )

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{kind} {' and '.join(bounds)}".strip()
        return text + "".join(f" or {v!r}" for v in self.also)

    def refused(self) -> list:
        out = []
        one = 1 if self.integer else 0.5
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - one)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + one)
        out = [v for v in out if v not in self.also]
        return [int(v) if self.integer else float(v) for v in out]


@dataclasses.dataclass(frozen=True)
class Each:
    """A list whose every item satisfies `rule`, and not empty."""

    rule: OneOf | Range

    def allows(self, value) -> bool:
        return isinstance(value, list | tuple) and bool(value) and all(map(self.rule.allows, value))

    def describe(self) -> str:
        return f"a non-empty list, each item {self.rule.describe()}"

    def refused(self) -> list:
        return [[v] for v in self.rule.refused()]


Rule = OneOf | Range | Each

# The shapes most keys take.
POSITIVE_INT = Range(1, integer=True)
COUNT = Range(0, integer=True)  # 0 = off / default, as the key's comment says
NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)
FRACTION = Range(0.0, 1.0)
PROBABILITY = Range(0.0, 1.0, low_open=True)  # top-p


def check(section: Mapping, rules: Mapping, prefix: str) -> None:
    """Raise ValueError naming the first key of `section` (under `prefix`) whose value its rule
    refuses."""
    for key, rule in rules.items():
        if key not in section:
            continue  # an older run's config, read back, may lack a key
        value = section[key]
        if isinstance(rule, Mapping):
            check(value, rule, f"{prefix}{key}.")
        elif not rule.allows(value):
            shown = list(value) if isinstance(value, tuple) else value  # a config holds lists as tuples
            raise ValueError(f"{prefix}{key}={shown!r} is not allowed: expected {rule.describe()}")


def walk(rules: Mapping, prefix: str = ""):
    """(dotted key, rule) for every rule of a nested rules dict."""
    for key, rule in rules.items():
        if isinstance(rule, Mapping):
            yield from walk(rule, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", rule
