"""Output: strict JSON values, and files written whole or not at all (a temp file beside the
target, renamed in)."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any

from gpusim.errors import InputError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Readers never see half a file, and a failed write leaves nothing behind."""
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write: folder {folder} does not exist", file=str(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 honours the umask, unlike mkstemp's fixed 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
