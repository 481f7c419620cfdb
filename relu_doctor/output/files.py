"""Writing outputs: refuse an unwritable target before the scan, write atomically after."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from relu_doctor.errors import UsageError


def check_writable(path: str, option: str = "output") -> None:
    """Fail before scanning when ``path`` could not be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(
            f"cannot write {path}: folder {str(folder)!r} does not exist", param=option
        )
    if target.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory", param=option)
    if not os.access(folder, os.W_OK):
        raise UsageError(
            f"cannot write {path}: folder {str(folder)!r} is not writable", param=option
        )


def write_atomic(path: str, data: str | bytes) -> None:
    """Write via a temporary file and rename, so a failure never leaves half a report."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
