"""Which failures are the user's to fix, decided by class, in one place.

A command reports these in one or two lines and exits 1 (:mod:`panet_jax.cli`); anything else
is a bug and keeps its traceback. The classes:

* bad input or configuration: ``ValueError`` (the project's own errors derive from it);
* files: missing, unreadable, damaged, permissions, a full disk: ``OSError``, and any error of
  a library whose cause chain or text shows one of :data:`RESOURCE_ERRNOS`
  (:func:`resource_error`: TFDS and orbax wrap a full disk in ``RuntimeError``);
* an input too large to decode: ``PIL.Image.DecompressionBombError``, ``MemoryError``;
* a diverged run: ``FloatingPointError``; a missing optional package: ``ImportError``;
* a check that ran and failed: :class:`CommandFailed`.
"""

from __future__ import annotations

import errno
import os

from PIL import Image

# The conditions of a machine's resources a user can act on, named as they would say them.
RESOURCE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class CommandFailed(Exception):
    """A command that ran to the end but whose outcome is a failure (the message says which
    part)."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    FloatingPointError,
    ImportError,
    MemoryError,
    Image.DecompressionBombError,
    CommandFailed,
)


def _chain(e: BaseException | None):
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def os_error_in(e: BaseException) -> OSError | None:
    """The first ``OSError`` with an errno in an exception's cause / context chain."""
    return next((x for x in _chain(e) if isinstance(x, OSError) and x.errno is not None), None)


def resource_error(e: BaseException) -> int | None:
    """The errno of :data:`RESOURCE_ERRNOS` behind ``e`` (its chain, or the OS's text of it in
    a library's message), else ``None``."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in RESOURCE_ERRNOS:
            return x.errno
        text = str(x)
        for code in RESOURCE_ERRNOS:
            if os.strerror(code) in text:
                return code
    return None


def is_expected(e: BaseException) -> bool:
    """Whether ``e`` is the user's to fix (see the module docstring)."""
    return isinstance(e, EXPECTED_ERRORS) or resource_error(e) is not None


def first_line(e: BaseException, limit: int = 240) -> str:
    """The first line of an exception's text (library errors run to pages), shortened."""
    lines = [ln.strip() for ln in (str(e) or type(e).__name__).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
