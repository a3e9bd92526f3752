"""Calibration arrays read from their file batch by batch, so memory does not grow with ``--samples``.

A ``.npy`` file, or a member of an ``.npz`` archive stored without compression (``numpy.savez``), holds
its samples as one C-ordered block after a header: sample ``i`` is the ``row`` bytes at
``offset + i·row``.  :class:`DiskArray` records where that block is and reads the rows a batch
asks for with ``os.pread`` into a new array.  The bytes pass through the page cache, not the
process's resident memory: 2048 ImageNet-sized images (1.2 GB of float32) cost one batch of
memory instead of all of them.  Compressed archives and arrays not in C order are read into memory
as before (:func:`open_array` returns ``None``).  The file is opened for reading only and never
written (the input files are never modified).
"""

from __future__ import annotations

import os
import struct
import tempfile
import weakref
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

#: arrays smaller than this are read into memory (a file handle per tiny input is not worth it)
MIN_BYTES = 64 << 20

#: rows read per ``pread`` when checking a whole array (NaN/Inf scan)
SCAN_ROWS = 256


class _Fd:
    """An open file descriptor, closed when no array reads it any more (a file renamed or removed meanwhile
    is still the one read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        weakref.finalize(self, os.close, fd)


@dataclass(frozen=True)
class DiskArray:
    """A read-only ``(n, ...)`` array whose rows live in ``path`` at ``offset`` (samples on axis 0).

    Supports what the calibration code uses: ``shape``, ``dtype``, ``ndim``, ``len``, ``nbytes``,
    integer-array and slice indexing along axis 0 (``a[idx]``, ``a[:n]``), each returning an
    in-memory ``numpy`` array (a slice that keeps the first rows returns a shorter :class:`DiskArray`).
    """

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    handle: _Fd = field(compare=False, repr=False)  # the file, open for reading (a spill file has no name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        return _nbytes(self.shape[1:], self.dtype)

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):  # rows first, then the rest of the index in memory
            rows = np.asarray(self[key[0]])
            rest = (slice(None), *key[1:])
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[rest]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if start == 0 and step == 1:
                return DiskArray(self.path, self.offset, (stop, *self.shape[1:]), self.dtype, self.handle)
            return self.take(np.arange(start, stop, step))
        if isinstance(key, (int, np.integer)):
            return self.take(np.asarray([key]))[0]
        return self.take(np.asarray(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row, in memory (``np.asarray(a)``)."""
        a = self.take(np.arange(self.shape[0]))
        return a if dtype is None else a.astype(dtype)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) as a new ``(len(indices), ...)`` array.

        Consecutive indices are read in one ``pread``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        out = np.empty((idx.size, *self.shape[1:]), dtype=self.dtype)
        flat: np.ndarray = out.reshape(idx.size, -1).view(np.uint8) if out.size else out
        row = self.row_bytes
        fd = self.handle.fd
        start = 0
        while start < idx.size:
            end = start + 1
            while end < idx.size and idx[end] == idx[end - 1] + 1:
                end += 1
            want = (end - start) * row
            buf = memoryview(flat[start:end].reshape(-1).data)
            got = 0
            while got < want:
                n = _read_at(fd, buf[got:], self.offset + int(idx[start]) * row + got)
                if n <= 0:
                    raise OSError(f"{self.path} ended before row {int(idx[end - 1])}")
                got += n
            start = end
        return out

    def chunks(self, rows: int = SCAN_ROWS) -> Iterator[np.ndarray]:
        """The rows in order, ``rows`` at a time."""
        for s in range(0, self.shape[0], rows):
            yield self.take(np.arange(s, min(s + rows, self.shape[0])))


def _read_at(fd: int, buf: memoryview, offset: int) -> int:
    """Read into ``buf`` from ``offset`` of ``fd``; the bytes read (``os.preadv`` where the system has it,
    else a seek and a read: one reader per file at a time, as here)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, len(buf))
    buf[: len(data)] = data
    return len(data)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


#: a calibration input's samples: in memory, or in a file
Array = np.ndarray | DiskArray


def _npy_block(fh: Any) -> tuple[int, tuple[int, ...], np.dtype[Any]] | None:
    """``(header length, shape, dtype)`` of the ``.npy`` stream at ``fh``'s position, ``None`` if its data
    are not one C-ordered block of a plain dtype."""
    start = fh.tell()
    version = npy_format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
    else:
        return None
    if fortran or dtype.hasobject or not shape:
        return None
    return fh.tell() - start, tuple(int(d) for d in shape), dtype


def map_npy_stream(path: Path, count: int) -> list[np.ndarray]:
    """The ``count`` arrays written one after another to ``path`` by ``numpy.save``, mapped from the file.

    [R, speed] Reading a large array (``numpy.load``) fills a new array: the kernel zeroes its fresh pages
    and copies the file's bytes in, and on this project's 2-core machine that zeroing was a quarter of the
    CPU time of ResNet-50's statistics stage (``perf``: ``clear_page_erms`` under ``filemap_read``; its
    frontier files were read 10 GB in a run).  A private (copy-on-write) mapping of the file's bytes instead
    uses the page cache's pages as they are: no zeroing, no copy.  The arrays stay valid after the file is
    deleted (the mapping holds it until the last array is freed).  Arrays that are not one C-ordered block of
    a plain dtype (or are empty, or 0-d) are read as before.
    """
    out: list[np.ndarray] = []
    with open(path, "rb") as fh:
        for _ in range(count):
            start = fh.tell()
            block = _npy_block(fh)
            size = 0 if block is None else _nbytes(block[1], block[2])
            if block is None or size == 0:
                fh.seek(start)
                out.append(np.load(fh, allow_pickle=False))
                continue
            header, shape, dtype = block
            # a plain ndarray view: the memmap it views keeps the mapping alive
            out.append(np.asarray(np.memmap(path, dtype=dtype, mode="c", offset=start + header, shape=shape)))
            fh.seek(start + header + size)
    return out


def open_npy(path: Path, min_bytes: int | None = None) -> DiskArray | None:
    """``path`` (an ``.npy`` file) as a :class:`DiskArray`, or ``None`` (under ``min_bytes``, Fortran order,
    object dtype; ``min_bytes`` defaults to :data:`MIN_BYTES`)."""
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    with open(path, "rb") as fh:
        block = _npy_block(fh)
    if block is None:
        return None
    header, shape, dtype = block
    if _nbytes(shape, dtype) < min_bytes or os.path.getsize(path) < header + _nbytes(shape, dtype):
        return None  # small, or cut short (numpy's own reader then says what is wrong)
    return DiskArray(path, header, shape, dtype, _Fd(os.open(path, os.O_RDONLY)))


def open_npz(path: Path, min_bytes: int | None = None) -> dict[str, DiskArray]:
    """The members of ``path`` (an ``.npz`` archive) stored uncompressed and at least ``min_bytes`` large
    (default :data:`MIN_BYTES`), as :class:`DiskArray` by array name."""
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    out: dict[str, DiskArray] = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as fh:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                continue
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            data = info.header_offset + 30 + name_len + extra_len
            fh.seek(data)
            block = _npy_block(fh)
            if block is None:
                continue
            header, shape, dtype = block
            nbytes = _nbytes(shape, dtype)
            if nbytes >= min_bytes and header + nbytes == info.file_size:
                out[info.filename[: -len(".npy")]] = DiskArray(
                    path, data + header, shape, dtype, _Fd(os.open(path, os.O_RDONLY))
                )
    return out


def spill(chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype: np.dtype[Any]) -> DiskArray:
    """The rows ``chunks`` yields (``shape[0]`` in all, in order) written to an unnamed temporary file.

    The file has no name from the start (``tempfile.TemporaryFile``: ``O_TMPFILE`` on Linux), so an
    interrupted run leaves nothing behind; it is freed when the array is.
    """
    with tempfile.TemporaryFile() as f:
        written = 0
        for c in chunks:
            f.write(np.ascontiguousarray(c, dtype=dtype).tobytes())
            written += len(c)
        if written != shape[0]:
            raise ValueError(f"spill: {written} rows written, {shape[0]} expected")
        f.flush()
        handle = _Fd(os.dup(f.fileno()))
    return DiskArray(Path(f"<spill fd {handle.fd}>"), 0, tuple(shape), np.dtype(dtype), handle)


def all_finite(a: np.ndarray | DiskArray) -> bool:
    """No NaN or Inf in ``a`` (a :class:`DiskArray` is scanned in chunks)."""
    if isinstance(a, DiskArray):
        return all(bool(np.isfinite(c).all()) for c in a.chunks())
    return bool(np.isfinite(a).all())
