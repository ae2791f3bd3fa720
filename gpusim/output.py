"""Output: strict JSON values, and files written whole or not at all (a temp file beside the
target, renamed in). Every failure to write is an InputError naming the path and the reason."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any

from gpusim.errors import InputError


def _temp_name(folder: str, name: str) -> str:
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_output_path(path: str | Path) -> None:
    """Fail now, not after a long run, on an output path that cannot be written: a directory or
    other non-file target, a missing folder, a folder we may not create files in.

    The folder is probed by creating and removing a temp file: permission bits say nothing for
    root, and /proc or a read-only mount only refuse at creation time.
    """
    target = str(path)
    if target.endswith(os.sep) or os.path.isdir(target):
        raise InputError("cannot write: it is a directory; give a file name", file=target)
    if os.path.exists(target) and not os.path.isfile(target):
        # a device or FIFO: the rename would replace it with a plain file
        raise InputError("cannot write: not a regular file", file=target)
    folder, name = os.path.split(os.path.abspath(target))
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise InputError(f"cannot write: folder {folder} {what}", file=target)
    probe = _temp_name(folder, name)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise InputError(f"cannot write in folder {folder}: {_reason(exc)}", file=target) from None
    os.unlink(probe)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Readers never see half a file, and a failed write leaves nothing behind."""
    check_output_path(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = _temp_name(folder, name)
    try:
        # os.open with 0o666 honours the umask, unlike mkstemp's fixed 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, quota, the folder went away meanwhile
            raise InputError(f"cannot write: {_reason(exc)}", file=str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become null so the output is strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
