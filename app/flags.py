"""Pydantic fields as argparse flags: a model declares each option once, and every CLI derives its flags.

`storydiff generate` (SamplerSettings), `storydiff serve` (Settings) and `storydiff train`
(TrainConfig) build their flags here. A flag left out is absent from the parsed namespace, so the
layer below (a checkpoint, the environment, a preset) decides; the model validates what was given.
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

NONE_WORDS = frozenset({"none", "null", ""})
"""How a flag of an optional field says None ("off", "auto": whatever the field's description says)."""


def add_field_flags(
    parser: argparse._ActionsContainer,
    fields: Mapping[str, FieldInfo],
    *,
    show_default: bool = False,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """One `--kebab-name` flag per field, help from its description; `extra` adds argparse keywords."""
    for name, info in fields.items():
        kwargs = flag_kwargs(info.annotation) | dict((extra or {}).get(name, {}))
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,  # absent, not None: the layer below keeps its value
            help=field_help(info, show_default),
            **kwargs,
        )


def flag_kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field type: bools are --x/--no-x, lists take several values, enums and
    Literals are choices, and an optional scalar also takes `none` (or `null`)."""
    args = typing.get_args(annotation)
    nullable = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    inner = next(a for a in args if a is not type(None)) if nullable else annotation
    origin = typing.get_origin(inner)
    if inner is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return {"nargs": "+", "metavar": "VALUE"}
    if origin is tuple:
        return {"nargs": len(typing.get_args(inner)), "type": float, "metavar": "X"}
    choices = _choices(inner)
    if choices is not None:
        return {"choices": choices}
    kind = inner if inner in (int, float, str, Path) else str
    return {"type": _none_or(kind) if nullable else kind}


def field_help(info: FieldInfo, show_default: bool) -> str:
    """The field's description, with its default where the caller shows defaults (None says nothing)."""
    text = info.description or ""
    if not show_default:
        return text
    if info.is_required():
        return f"{text} (required)"
    default = info.default.value if isinstance(info.default, enum.Enum) else info.default
    return text if default is None else f"{text} (default: {default})"


def flag_name(field: str) -> str:
    """`top_p` -> `--top-p`."""
    return f"--{field.replace('_', '-')}"


def given_fields(args: argparse.Namespace, fields: Mapping[str, FieldInfo]) -> dict[str, Any]:
    """The flags of `fields` that were given on the command line."""
    return {name: value for name, value in vars(args).items() if name in fields}


def error_line(err: ValidationError, name: Callable[[str], str] = flag_name) -> str:
    """A validation error as one line that names the flags: `--steps: Input should be ...`."""
    return "; ".join(f"{name(str(e['loc'][0]))}: {e['msg']}" if e["loc"] else e["msg"] for e in err.errors())


def _choices(kind: Any) -> list[str] | None:
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [str(member.value) for member in kind]
    if typing.get_origin(kind) is typing.Literal:
        return [str(value) for value in typing.get_args(kind)]
    return None


def _none_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in NONE_WORDS else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in "invalid int value"
    return parse
