"""Output files: checked before any work starts, written together or not at all.

* :func:`check_outputs` refuses, up front, an output that is the input model, one
  of the files the input reads (its external data), another output, an existing
  file (without ``force``), or a path whose folder is missing or not writable.
* :func:`write_together` writes every file to a temporary file beside its target,
  then renames them into place; if any step fails (or the process is
  interrupted) the targets are restored as they were and no temporary file is
  left.  Files get the usual creation mode (``0666`` less the umask), not
  ``mkstemp``'s ``0600``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import OutputError, UsageError


def check_outputs(inputs: Iterable[Path], outputs: Mapping[str, Path], *, force: bool) -> None:
    """Validate the output paths ``outputs`` (label → path) against the files the input reads.

    Raises:
        UsageError: an output collides with an input file or another output, or exists without ``force``.
        OutputError: an output's folder is missing or not writable.
    """
    read = {p.resolve(): p for p in inputs}
    seen: dict[Path, str] = {}
    for label, path in outputs.items():
        r = path.resolve()
        if r in read:
            what = "the input model" if read[r] == next(iter(read.values())) else "a file the input model reads"
            raise UsageError(f"{label} path {path} is {what} ({read[r]}): choose another path")
        if r in seen:
            raise UsageError(f"{label} path {path} is also the {seen[r]} path")
        seen[r] = label
        if path.exists() and path.is_dir():
            raise UsageError(f"{label} path {path} is a folder")
        if path.exists() and not force:
            raise UsageError(f"{label} exists: {path} (use --force to overwrite)")
        folder = path.parent
        if not folder.is_dir():
            raise OutputError(f"{label} folder does not exist: {folder}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{label} folder is not writable: {folder}")


def _creation_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_together(files: Mapping[Path, bytes | Iterable[bytes]], *, force: bool) -> None:
    """Write every ``files[path]`` (bytes, or chunks written one after another) as one outcome: all of
    them, or none (targets left as they were).

    Raises:
        OutputError: a target exists without ``force`` or cannot be written.
    """
    temps: dict[Path, Path] = {}
    backups: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for path, data in files.items():
            if path.exists() and not force:
                raise OutputError(f"output exists: {path} (use --force to overwrite)")
            try:
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
            except OSError as e:
                raise OutputError(f"cannot write to {path.parent}: {e}") from e
            temps[path] = Path(name)
            with os.fdopen(fd, "wb") as f:
                for chunk in [data] if isinstance(data, bytes) else data:
                    f.write(chunk)
            os.chmod(name, _creation_mode())
        for path, t in temps.items():
            if path.exists():
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak", dir=str(path.parent))
                os.close(fd)
                backup = Path(name)
                os.replace(path, backup)
                backups[path] = backup
            os.replace(t, path)
            placed.append(path)
    except BaseException as e:
        for path in reversed(placed):
            path.unlink(missing_ok=True)
        for path, backup in backups.items():
            os.replace(backup, path)
        for t in temps.values():
            t.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write the outputs: {e}") from e
        raise
    for backup in backups.values():
        backup.unlink(missing_ok=True)
