"""Shared CLI plumbing: one console, and user errors printed without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from safealign.config import ConfigError
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


def is_tty() -> bool:
    """Whether stdout is an interactive terminal (progress bars only then)."""
    return sys.stdout.isatty()
