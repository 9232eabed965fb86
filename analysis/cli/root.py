"""The ``vsink`` typer app, its entry point and the error policy at the edge.

Error policy (:func:`friendly`, around every command):

- :data:`ONE_LINE_ERRORS` (the toolkit's :class:`~analysis.errors.VsinkError`),
  file-system faults (``OSError``) and interrupts print one line; errors exit 2, SIGINT / SIGTERM 130 / 143.
- Anything else is a bug and keeps its traceback.
- ``vsink --debug COMMAND`` (or ``VSINK_DEBUG=1``) prints the full traceback of every
  error, the one-line ones included, before the same line and exit code.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer
from rich.markup import escape

from analysis.cli.tables import err_console
from analysis.errors import VsinkError

app = typer.Typer(
    name="vsink",
    help="Visual attention sinks in large multimodal models: dims, sinks, heads, ablations, VAR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Errors the user can fix, printed as one line (their message says what to do).
#: A bare ``ValueError`` is not among them: the library raises UserInputError for
#: bad input, so a ValueError reaching the edge is a bug and keeps its traceback.
#: ``FileNotFoundError`` is an input that does not exist (its message names it).
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (VsinkError, FileNotFoundError)

# Exit codes: 2 for an error the user can fix, 128 + signal number when stopped by a signal.
EXIT_USER_ERROR = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

#: Key of the ``--debug`` flag in the root click context's ``meta``.
DEBUG_KEY = "vsink.debug"
#: The context parameter `friendly` adds to each command (a name no command uses).
_CONTEXT_PARAM = "_vsink_context"


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="VSINK_DEBUG",
            help="Print the full traceback of every error (also the one-line ones).",
        ),
    ] = False,
) -> None:
    """Visual attention sinks in large multimodal models: dims, sinks, heads, ablations, VAR."""
    ctx.meta[DEBUG_KEY] = debug


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs (locks released, parts kept)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _interrupted_line(err: KeyboardInterrupt) -> str:
    from analysis.evaluation import RunInterrupted

    if isinstance(err, RunInterrupted):
        return (
            f"interrupted: {err.written} records written ({err.present} in {err.run}), "
            "rerun the same command to resume"
        )
    return "interrupted"


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def _one_line(text: str, err: BaseException, code: int, debug: bool) -> typer.Exit:
    """Print ``text`` (after the traceback under ``--debug``) and the exit to raise."""
    if debug:
        sys.stderr.write("".join(traceback.format_exception(err)))
        sys.stderr.flush()
    # soft_wrap: a long message stays one line instead of being wrapped at 80 columns.
    err_console.print(text, soft_wrap=True)
    return typer.Exit(code=code)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the error policy of the module docstring to one command.

    Warnings print as one line too.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from analysis.fsio import describe_os_error

        ctx = kwargs.pop(_CONTEXT_PARAM, None)
        debug = bool(ctx is not None and ctx.meta.get(DEBUG_KEY, False))

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except ONE_LINE_ERRORS as err:
            line = f"[bold red]error:[/] {escape(str(err))}"
            raise _one_line(line, err, EXIT_USER_ERROR, debug) from None
        except OSError as err:  # a file-system fault: disk full, read-only, a folder for a file
            line = f"[bold red]error:[/] {escape(describe_os_error(err))}"
            raise _one_line(line, err, EXIT_USER_ERROR, debug) from None
        except KeyboardInterrupt as err:
            stopped_by = err.__cause__ if err.__cause__ is not None else err
            code = EXIT_SIGTERM if isinstance(stopped_by, Terminated) else EXIT_SIGINT
            raise _one_line(escape(_interrupted_line(err)), err, code, debug) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    # typer passes the click context to a parameter annotated typer.Context: the wrapper
    # declares one more (keyword-only, removed before `fn` is called) to read --debug.
    signature = inspect.signature(fn, eval_str=True)
    context = inspect.Parameter(
        _CONTEXT_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
    )
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), context]
    )
    wrapper.__annotations__ = {**fn.__annotations__, _CONTEXT_PARAM: typer.Context}
    return wrapper


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(EXIT_SIGINT)
