"""panet_jax.errors: which failures are the user's, decided by class, and how the command line
words them (panet_jax.cli), on the shapes libraries really raise them in."""

from __future__ import annotations

import errno
import logging

import pytest
from PIL import Image

from panet_jax import cli, errors
from panet_jax.train import checkpointing

TFDS_FULL_DISK = (
    'Failed to finalize writing of split "trainaug": write() failed: No space left on device'
)


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError(TFDS_FULL_DISK), errno.ENOSPC),  # TFDS: only the OS's text
        (_raised_from(RuntimeError("save failed"), OSError(errno.EDQUOT, "quota")), errno.EDQUOT),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x"), errno.EACCES),
        (RuntimeError("Read-only file system: /ckpt"), errno.EROFS),
        (RuntimeError("shape mismatch in dot_general"), None),
        (ValueError("config.train.steps=-3"), None),
    ],
    ids=["tfds-full-disk", "chained-quota", "permission", "read-only", "a-bug", "bad-value"],
)
def test_resource_errors_are_recognised_by_errno_or_the_os_text(error, code):
    assert errors.resource_error(error) == code


def test_expected_is_decided_by_class():
    assert errors.is_expected(RuntimeError(TFDS_FULL_DISK))
    assert errors.is_expected(Image.DecompressionBombError("Image size (2 pixels) exceeds"))
    assert errors.is_expected(errors.CommandFailed("parts failed: tests"))
    assert not errors.is_expected(RuntimeError("shape mismatch in dot_general"))
    assert not errors.is_expected(KeyError("params"))


def test_messages_say_what_to_do_without_internals():
    full = cli.error_message(RuntimeError(TFDS_FULL_DISK))
    assert full.startswith("no space left on the device") and "free some space" in full
    bare = cli.error_message(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/a/file/x"))
    assert bare == "'/a/file/x': not a directory"
    wrapped = cli.error_message(
        ValueError("flag --config=c.py:x: Error whilst parsing config file:\n\nTraceback (most "
                   "recent call last):\n  File \"c.py\", line 3\nValueError: unknown key 'x'")
    )  # fmt: skip
    assert wrapped == "flag --config=c.py:x: Error whilst parsing config file: unknown key 'x'"


def _record(message: str, exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), exc_info)


def test_sibling_write_failures_are_dropped_by_class_other_lost_exceptions_kept():
    drop = checkpointing._SiblingWriteFailures()
    full = OSError(errno.ENOSPC, "No space left on device")
    for name in ("Future", "Task", "_GatheringFuture"):
        assert not drop.filter(_record(f"{name} exception was never retrieved", full))
    assert drop.filter(_record("Task exception was never retrieved", KeyError("x")))
    assert drop.filter(_record("an unrelated asyncio error", full))
