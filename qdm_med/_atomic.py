"""Atomic output: write to a temporary sibling, rename into place on success.

A crash, Ctrl-C or error mid-write leaves no partial output under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from qdm_med.errors import OutputError


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate that ``path`` may be written: refuse an existing one unless ``overwrite``, and an
    unwritable or missing parent folder. Returns the path as :class:`Path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: output exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{path}: cannot create output folder {parent} ({err.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: output folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffixes, so format detection by extension works);
    on normal exit rename it onto ``path``; on any exception delete it.

    Works for files and for folders (e.g. a DICOM series): the caller creates what it needs at the
    yielded path.
    """
    path = check_output_path(path, overwrite)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # callers create it (file or folder)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{path}: nothing was written")
        if path.exists():  # only reachable with overwrite=True
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
