"""Shared CLI plumbing: one console, and user errors printed without a traceback."""

from __future__ import annotations

import sys
import dataclasses
import importlib
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from safealign.config import ConfigError, build_config, describe_type, field_docs
from safealign.data.errors import DataError, printable
from safealign.models.loading import DeviceError

# No markup by default: what is printed quotes users' files, where "[/x]" is text, not a style.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise."""
    # The message may quote a user's file: escape it, so "[/x]" in the data is not read as markup.
    err_console.print(f"[bold red]error:[/] {escape(printable(message))}", markup=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn DataError (and other expected input errors) into a one-line message and exit 1."""
    try:
        yield
    except (DataError, ConfigError, DeviceError) as exc:
        raise fail(str(exc)) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise fail(f"{exc.filename}: {exc.strerror}") from None


def run_or_exit(fn: Callable[[], T]) -> T:
    """Call `fn` inside `user_errors`."""
    with user_errors():
        return fn()


def quiet_transformers(threads: int | None = None) -> None:
    """No load reports or shard progress bars (they drown the command's output); `threads` torch threads when given."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if threads:
        import torch

        torch.set_num_threads(threads)


def is_tty() -> bool:
    """Whether stdout is an interactive terminal (progress bars only then)."""
    return sys.stdout.isatty()


# Unknown flags reach the command (they are the config's fields); --help is the command's own.
CONFIG_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
_SHORT = {"-c": "--config", "-f": "--format"}


def config_command(app: typer.Typer, name: str, config_class: str, run: Callable[[Any], None], help: str,
                   aliases: dict[str, str] | None = None) -> None:
    """Register `NAME [--config FILE.yaml] [--field value ...]`, whose flags are the fields of a config dataclass.

    `config_class` is "module:Class", imported when the command runs (the CLI starts without torch).
    The YAML file and the flags fill the same config (flags win), so a command line can be
    moved into a file as it is. `aliases` maps extra flag names to fields (`out` -> `output_dir`).
    Without arguments, or with --help, the command lists every field with its type, default and text.
    """
    aliases = aliases or {}

    def command(ctx: typer.Context) -> None:
        module, _, attr = config_class.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        args = list(ctx.args)
        if not args or "--help" in args or "-h" in args:
            print_config_help(ctx.command_path, cls, help, aliases)
            raise typer.Exit(0)
        try:
            path, overrides = command_overrides(cls, args, aliases)
            config = build_config(cls, path, overrides)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        with user_errors():
            run(config)

    app.command(name, help=help, context_settings=CONFIG_CONTEXT)(command)


def command_overrides(cls: type, args: list[str], aliases: dict[str, str]) -> tuple[str | None, list[str]]:
    """(the --config file, the field overrides) of a command line: -f is --format, --no-FLAG is --FLAG false."""
    hints = typing.get_type_hints(cls)
    path: str | None = None
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = _SHORT.get(args[i], args[i])
        flag, eq, value = arg.partition("=")
        key = flag[2:].replace("-", "_") if flag.startswith("--") else ""
        if key == "config":
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError("--config: expected a YAML file after it")
                i += 1
                value = args[i]
            path = value
        elif key.startswith("no_") and hints.get(key[3:]) is bool and not eq:
            overrides += [f"--{key[3:]}", "false"]
        elif key in aliases:
            overrides.append(f"--{aliases[key]}{eq}{value}" if eq else f"--{aliases[key]}")
        else:
            overrides.append(arg)
        i += 1
    return path, overrides


def print_config_help(command: str, cls: type, help: str, aliases: dict[str, str]) -> None:
    """Usage, the command's text, and one row per field: flag, type, default, text."""
    from rich.table import Table

    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    alias_of = {field: alias for alias, field in aliases.items()}
    console.print(f"Usage: {command} [--config FILE.yaml] [--field value ...]\n")
    console.print(help.strip() + "\n")
    console.print("Fields: YAML keys of --config, or flags (--field value or --field=value; flags win over the file). "
                  "A list (TEXT...) takes its flag once per item; a BOOL flag alone is true, --no-FLAG false; "
                  "--section.field reaches into a SECTION.\n")
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column(no_wrap=True)
    table.add_column(ratio=1)
    for f in _own_fields_first(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.name in alias_of:
            flag += f", --{alias_of[f.name].replace('_', '-')}"
        table.add_row(f"{flag} {describe_type(hints[f.name])}", f"{docs.get(f.name, '')} {_default_text(f)}".strip())
    console.print(table)


def _own_fields_first(cls: type) -> list[dataclasses.Field]:
    """The init fields, those the command's own class declares first, then each base's (SamplingSettings last)."""
    by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
    order: list[str] = []
    for klass in cls.__mro__:
        order += [name for name in vars(klass).get("__annotations__", {}) if name in by_name and name not in order]
    return [by_name[name] for name in order]


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "" if f.default is None else f"[default: {f.default}]"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return f"[default: {value}]" if value else ""
    return "[required]"
