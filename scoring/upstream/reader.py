"""Typed reading of one mapping of the models config, with errors that name the field."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from ..model.manifest import PackageError, check_name


class ConfigError(ValueError):
    """The models config is invalid; the message names the field and what was expected."""


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a mapping",
               bool: "true or false", float: "a number"}


class _Reader:
    """Typed access to one mapping of the config, with errors that name the field."""

    def __init__(self, raw: Any, where: str, source: str) -> None:
        if not isinstance(raw, dict):
            what = where.rstrip(".") or "the top level"
            raise ConfigError(f"{source}: {what}: expected a mapping, got {type(raw).__name__}")
        self.raw, self.where, self.source = raw, where, source

    def has(self, key: str) -> bool:
        return key in self.raw

    def only(self, *allowed: str) -> None:
        for key in self.raw:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known fields: {list(allowed)}"
                raise ConfigError(f"{self.source}: {self.where}{key}: unknown field{hint}")

    def get(self, key: str, typ: type | tuple, *, required: bool = False, default: Any = None,
            nullable: bool = False) -> Any:
        if key not in self.raw:
            if required:
                raise ConfigError(f"{self.source}: {self.where}{key} is missing")
            return default
        val = self.raw[key]
        if val is None and nullable:
            return None
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(val, bool) and bool not in types or not isinstance(val, types):
            expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise ConfigError(f"{self.source}: {self.where}{key}: expected {expected}, got {val!r}")
        return val

    def sub(self, key: str) -> _Reader:
        return _Reader(self.raw[key], f"{self.where}{key}.", self.source)

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
        val = self.get(key, int, default=default)
        if val is not None and not lo <= val <= hi:
            raise ConfigError(f"{self.source}: {self.where}{key}: expected an integer {lo}..{hi}, "
                              f"got {val}")
        return val

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        val = self.get(key, str, default=default)
        if val not in choices:
            raise ConfigError(f"{self.source}: {self.where}{key}: expected one of {list(choices)}, "
                              f"got {val!r}")
        return val

    def name(self, key: str, required: bool = False) -> str | None:
        val = self.get(key, str, required=required)
        if val is None:
            return None
        try:
            return check_name(val, f"{self.where}{key}")
        except PackageError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None
