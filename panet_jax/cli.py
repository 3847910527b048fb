"""How every entry point fails: one or two lines that name the file, flag or key, exit 1.

Expected errors (:mod:`panet_jax.errors`: bad input, bad config, bad or missing files, a full
disk, permissions, an image too large, a diverged run) are the interface of a command-line
tool, not bugs: their message is printed as ``<program>: error: <message>`` without a
traceback, which goes to the log at debug level. ``--verbose`` (or ``PANET_VERBOSE=1``)
re-raises them with the traceback, for bug reports. Every command runs through :func:`run`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags
from absl import logging as absl_logging
from PIL import Image

from panet_jax import errors

flags.DEFINE_bool("verbose", False, "Show the Python traceback of an error (for bug reports).")


MAX_LINES = 6  # a message that lists several items (keys, files) may take a few lines


class FlagError(ValueError):
    """A flag value that cannot work (checked before any work): exit status 2."""

    exit_code = 2


def require_choices(
    flag: str, values: list[str] | None, accepted: tuple[str, ...] | None, example: str = ""
) -> None:
    """:class:`FlagError` for an empty list of things to do, or one naming an unknown item
    (``accepted=None``: any non-empty item is fine)."""
    items = [v.strip() for v in values or [] if v.strip()]
    expected = f"one or more of {', '.join(accepted)}" if accepted else f"a list ({example})"
    if not items:
        raise FlagError(f"{flag} is empty: nothing to do; expected {expected}")
    unknown = [v for v in items if accepted and v not in accepted]
    if unknown:
        raise FlagError(f"{flag}: unknown {', '.join(map(repr, unknown))}; expected {expected}")


def verbose() -> bool:
    """Whether tracebacks were asked for (``--verbose`` or ``PANET_VERBOSE=1``)."""
    parsed = flags.FLAGS.is_parsed() and flags.FLAGS["verbose"].value
    return bool(parsed) or os.environ.get("PANET_VERBOSE", "") not in ("", "0")


_TRACEBACK = "Traceback (most recent call last):"
_CONFIG_NOT_LOADED = "Configuration is not available because of an earlier failure to load"


def error_message(e: BaseException) -> str:
    """The user-facing text of an expected error (a full disk and permissions spelled out)."""
    code = errors.resource_error(e)
    bare = getattr(e, "strerror", None) or not isinstance(e, errors.EXPECTED_ERRORS)
    if code is not None and bare:
        # a bare OS error, or a library's error caused by one: say what the user can act on
        where = f": {e.filename!r}" if isinstance(e, OSError) and e.filename else ""
        cause = "" if isinstance(e, OSError) else f" ({errors.first_line(e)})"
        advice = "free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "fix it"
        return f"{errors.RESOURCE_ERRNOS[code]}{where}{cause}; {advice} and run again"
    if isinstance(e, OSError) and e.strerror and e.filename and str(e).startswith("[Errno"):
        return f"{e.filename!r}: {e.strerror[:1].lower()}{e.strerror[1:]}"  # a bare OS error
    if isinstance(e, Image.DecompressionBombError):
        return f"an image is too large to decode safely: {errors.first_line(e)}"
    if isinstance(e, MemoryError):
        return "out of memory: use smaller images, a smaller batch or fewer shots"
    text = str(e) or type(e).__name__
    if _TRACEBACK in text:  # a library that put a traceback in its message: keep its last line
        head = text.split(_TRACEBACK)[0].strip().rstrip(":").strip()
        last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1]
        last = last.split(": ", 1)[-1] if last.split(":", 1)[0].endswith("Error") else last
        text = f"{head}: {last}" if head else last
    if text.startswith(_CONFIG_NOT_LOADED):  # ml_collections: the --config file failed to load
        cause = text.strip().splitlines()[-1].strip()
        return f"--config: the config file could not be loaded: {cause}"
    lines = text.strip().splitlines()
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], f"... ({len(lines) - MAX_LINES + 1} more lines)"]
    return "\n".join(lines)


def fail(program: str, e: BaseException) -> None:
    """Print ``program: error: message`` on stderr and exit with status 1 (2 for a
    :class:`FlagError`); the traceback goes to the log at debug level."""
    absl_logging.debug("%s failed", program, exc_info=e)
    print(f"{program}: error: {error_message(e)}", file=sys.stderr, flush=True)
    sys.exit(getattr(e, "exit_code", 1))


def guarded(program: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, turning an expected error into :func:`fail` unless verbose."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if verbose() or not errors.is_expected(e):
            raise
        fail(program, e)




def flag_error_message(e: BaseException) -> str:
    """A flag-parsing error in a line or two: the innermost cause of a config file that cannot
    be loaded (missing, a syntax error, an exception in ``get_config``), else absl's text."""
    inner = e
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, SyntaxError) and inner is e:
        return f"config file {inner.filename}, line {inner.lineno}: {inner.msg}"
    if inner is e:
        return error_message(e)
    if isinstance(inner, SyntaxError):
        where = f"{inner.filename}, line {inner.lineno}" if inner.filename else "the config file"
        return f"{error_message(e).splitlines()[0]}: {inner.msg} ({where})"
    return f"{error_message(e).splitlines()[0]}: {error_message(inner).splitlines()[-1]}"


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the error policy above (the program name from argv[0]); a
    flag or config-file error is reported the same way, with exit status 2."""
    program = os.path.basename(sys.argv[0]) or "panet_jax"

    def parse_flags(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except Exception as e:  # a bad flag, or any error of the config file it loads
            if isinstance(e, flags.Error) and e.__cause__ is None and not str(e):
                raise
            if os.environ.get("PANET_VERBOSE", "") not in ("", "0") or "--verbose" in argv:
                raise
            print(f"{program}: error: {flag_error_message(e)}", file=sys.stderr, flush=True)
            print(f"{program}: pass --helpshort for the flags", file=sys.stderr, flush=True)
            sys.exit(2)

    def checked_main(argv: list[str]) -> Any:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        return guarded(program, main, argv)

    app.run(checked_main, flags_parser=parse_flags)
