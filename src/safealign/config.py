"""Config dataclasses are the single source of YAML files, CLI overrides and defaults.

`build_config(Cls, "run.yaml", ["--learning_rate", "1e-4", "--lora.r=8"])` reads the YAML
mapping, applies `--key value` / `--key=value` overrides (dots reach nested dataclasses),
coerces every value to the field's annotated type and calls the dataclass's `validate()`.
Every problem is a `ConfigError` that names the field (and the file).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value; the message names the field."""


def build_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """A validated `cls` from a YAML file and CLI overrides (overrides win)."""
    raw: dict[str, Any] = {}
    where = str(path) if path else "config"
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value")
        raw = loaded or {}
    repeated: dict[str, list[Any]] = {}
    for key, value in parse_overrides(overrides or []):
        # `--data a --data b` means both: a field given twice on the command line collects a list.
        repeated.setdefault(key, []).append(value)
    for key, values in repeated.items():
        _set_dotted(raw, key, values[0] if len(values) == 1 else [v for item in values for v in (item if isinstance(item, list) else [item])])
    config = _build(cls, raw, where, prefix="")
    return config


def config_from_mapping(cls: type[T], raw: dict[str, Any], where: str = "config") -> T:
    """A validated `cls` from an in-memory mapping (e.g. one stage of a pipeline file)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of field: value")
    return _build(cls, dict(raw), where, prefix="")


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """`--key value` / `--key=value` pairs; values are read as YAML scalars or lists."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --field value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                value = "true"  # a bare flag sets a boolean
            else:
                i += 1
                value = args[i]
        pairs.append((key.replace("-", "_"), _yaml_value(value)))
        i += 1
    return pairs


def at_least_one(config: Any, *names: str) -> None:
    """Each named field of `config`, when set (not None), is at least 1."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be at least 1, got {value}")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for saving next to a run)."""
    return dataclasses.asdict(config)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[last] = value


def _build(cls: type[T], raw: dict[str, Any], where: str, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{where}: {prefix}{key}: unknown field{hint}")
    values = {key: _coerce(value, hints[key], where, prefix + key) for key, value in raw.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values and _required(f)]
    if missing:
        raise ConfigError(f"{where}: {prefix}{missing[0]}: required field is missing")
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {prefix}{exc}") from None
    return config


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _coerce(value: Any, hint: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, where, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name}: expected a section of fields, got {value!r}")
        return _build(hint, value, where, prefix=name + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {name}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        item = args[0] if args else Any
        items = value if isinstance(value, list) else [value]
        return [_coerce(v, item, where, f"{name}[{i}]") for i, v in enumerate(items)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name}: expected a mapping, got {value!r}")
        return value
    return _scalar(value, hint, where, name)


def _scalar(value: Any, hint: Any, where: str, name: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {name}: expected a string, got {value!r}")
    return value


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal under it), across the class's bases.

    Empty for a class whose source cannot be read (a frozen app): the help then lists fields
    and defaults without their text.
    """
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe_type(hint: Any) -> str:
    """A field's type as the help shows it: INT, NUMBER, TEXT, BOOL, a|b|c, TEXT... (a list), SECTION."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return "|".join(describe_type(a) for a in args if a is not type(None))
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (list, tuple):
        return f"{describe_type(args[0]) if args else 'VALUE'}..."
    if origin is dict or hint is dict:
        return "MAPPING"
    if dataclasses.is_dataclass(hint):
        return "SECTION"
    return {bool: "BOOL", int: "INT", float: "NUMBER", str: "TEXT"}.get(hint, "VALUE")
