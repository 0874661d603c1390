"""Shared CLI plumbing: one console, and user errors printed without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

from safealign.config import ConfigError
from safealign.data.errors import DataError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn DataError (and other expected input errors) into a one-line message and exit 1."""
    try:
        yield
    except (DataError, ConfigError) as exc:
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
