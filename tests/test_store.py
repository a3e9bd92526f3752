"""Calibration arrays read from their files batch by batch (``onnx_poem.calibration.store``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.calibration import store
from onnx_poem.calibration.sources import ImageOptions, load_calibration
from onnx_poem.calibration.store import DiskArray, open_npy, open_npz, spill
from onnx_poem.errors import CalibrationError


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array counts as large (the default threshold is 64 MiB)."""
    monkeypatch.setattr(store, "MIN_BYTES", 0)


def _array(n: int = 37) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 4, 5)).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 36), max_size=50))
def test_rows_read_from_an_npy_file_equal_the_array(tmp_path_factory: pytest.TempPathFactory, idx: list[int]) -> None:
    x = _array()
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    np.save(path, x)
    a = open_npy(path, min_bytes=0)
    assert isinstance(a, DiskArray) and a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a[np.asarray(idx, dtype=np.int64)], x[idx])


def test_indexing_forms(tmp_path: Path) -> None:
    x = _array()
    np.save(tmp_path / "x.npy", x)
    a = open_npy(tmp_path / "x.npy", min_bytes=0)
    assert a is not None
    head = a[:10]
    assert isinstance(head, DiskArray) and head.shape == (10, 3, 4, 5)
    np.testing.assert_array_equal(np.asarray(head), x[:10])
    np.testing.assert_array_equal(a[5:20:3], x[5:20:3])
    np.testing.assert_array_equal(a[4], x[4])
    np.testing.assert_array_equal(a[2:6, 1], x[2:6, 1])
    np.testing.assert_array_equal(a[3, 1:], x[3, 1:])
    np.testing.assert_array_equal(np.concatenate(list(a.chunks(8))), x)
    with pytest.raises(IndexError):
        a[np.asarray([37])]


def test_npz_members_stored_plainly_are_read_from_the_archive(tmp_path: Path) -> None:
    x, y = _array(), np.arange(37, dtype=np.int64)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x)
    plain = open_npz(tmp_path / "plain.npz", min_bytes=0)
    assert set(plain) == {"x", "y"}
    np.testing.assert_array_equal(np.asarray(plain["x"]), x)
    np.testing.assert_array_equal(plain["y"][np.asarray([3, 1, 1])], y[[3, 1, 1]])
    assert open_npz(tmp_path / "packed.npz", min_bytes=0) == {}  # compressed: read into memory instead
    assert open_npz(tmp_path / "plain.npz") == {}  # under the default 64 MiB: in memory


def test_a_removed_file_is_still_read(tmp_path: Path) -> None:
    x = _array()
    np.save(tmp_path / "x.npy", x)
    a = open_npy(tmp_path / "x.npy", min_bytes=0)
    (tmp_path / "x.npy").unlink()
    assert a is not None
    np.testing.assert_array_equal(a[np.asarray([36, 0])], x[[36, 0]])


def test_a_spill_file_has_no_name_and_holds_the_rows(tmp_path: Path) -> None:
    x = _array()
    a = spill((x[s : s + 10] for s in range(0, 37, 10)), x.shape, x.dtype)
    np.testing.assert_array_equal(np.asarray(a), x)
    with pytest.raises(ValueError):
        spill(iter([x[:5]]), x.shape, x.dtype)


@pytest.mark.usefixtures("small_threshold")
def test_calibration_from_a_file_stays_in_the_file_and_prunes_the_same(tmp_path: Path) -> None:
    """The same pruned bytes from an ``.npz`` read batch by batch as from the arrays in memory."""
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 48)
    np.savez(tmp_path / "calib.npz", x=x)
    data = load_calibration(model, tmp_path / "calib.npz", samples=40, seed=0)
    assert isinstance(data.arrays["x"], DiskArray) and len(data) == 40
    from_file, _ = prune(model, ratio=0.5, calib=tmp_path / "calib.npz", samples=40)
    from_memory, _ = prune(model, ratio=0.5, calib=x, samples=40)
    assert from_file.SerializeToString(deterministic=True) == from_memory.SerializeToString(deterministic=True)


@pytest.mark.usefixtures("small_threshold")
def test_nan_in_a_file_backed_array_is_refused(tmp_path: Path) -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 600)
    x[555, 1, 2, 3] = np.nan  # in the third scan chunk
    np.save(tmp_path / "calib.npy", x)
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        load_calibration(model, tmp_path / "calib.npy", samples=600, seed=0)


@pytest.mark.usefixtures("small_threshold")
def test_images_are_decoded_once_into_a_spill_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = BUILDERS["conv_chain"]()  # (N, 3, 6, 6)
    monkeypatch.setattr("onnx_poem.calibration.sources.IMAGE_CHUNK", 2)
    spilled = load_calibration(model, tmp_path, samples=5, seed=0, image_options=ImageOptions())
    monkeypatch.setattr(store, "MIN_BYTES", 1 << 40)
    in_memory = load_calibration(model, tmp_path, samples=5, seed=0, image_options=ImageOptions())
    assert isinstance(spilled.arrays["x"], DiskArray) and isinstance(in_memory.arrays["x"], np.ndarray)
    np.testing.assert_array_equal(np.asarray(spilled.arrays["x"]), in_memory.arrays["x"])


def test_rows_are_read_without_preadv_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Systems without ``os.preadv`` (Windows) seek and read."""
    import os

    x = _array()
    np.save(tmp_path / "x.npy", x)
    a = open_npy(tmp_path / "x.npy", min_bytes=0)
    assert a is not None
    monkeypatch.delattr(os, "preadv")
    np.testing.assert_array_equal(a[np.asarray([36, 2, 3, 4, 0])], x[[36, 2, 3, 4, 0]])


@pytest.mark.usefixtures("small_threshold")
def test_a_calibration_file_cut_short_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    """The header promises more rows than the file holds: refused while loading, not mid-run."""
    import onnx
    from click.testing import CliRunner

    from onnx_poem.cli import main

    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", inputs_for(model, 64))
    data = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "c.npy").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CalibrationError, match="cannot read calibration file"):
        load_calibration(model, tmp_path / "c.npy", samples=64, seed=0)
    res = CliRunner().invoke(
        main,
        [
            str(tmp_path / "m.onnx"),
            "--calib",
            str(tmp_path / "c.npy"),
            "--ratio",
            "0.5",
            "-o",
            str(tmp_path / "o.onnx"),
        ],
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("error:") and "calibration" in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_a_frontier_file_is_mapped_array_by_array(tmp_path: Path) -> None:
    """``map_npy_stream`` gives back every array ``numpy.save`` wrote one after another (plain blocks mapped,
    the rest read), equal in dtype, shape and values; they outlive the file, and writing one changes neither
    the file nor the others."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((3, 4, 5)).astype(np.float32),
        np.asfortranarray(rng.standard_normal((6, 7))),  # Fortran order: read
        np.array(3, dtype=np.int64),  # 0-d: read
        np.zeros((0, 4), dtype=np.float32),  # empty: read
        rng.standard_normal((2, 9)).astype(np.float16),
        np.arange(10, dtype=np.int64),
    ]
    path = tmp_path / "frontier.npy"
    with open(path, "wb") as fh:
        for a in arrays:
            np.save(fh, a, allow_pickle=False)
    got = store.map_npy_stream(path, len(arrays))
    assert isinstance(got[0].base, np.memmap) and not isinstance(got[1].base, np.memmap)  # mapped / read
    before = path.read_bytes()
    got[0][...] = 0.0  # copy-on-write: the file keeps its bytes
    assert path.read_bytes() == before
    path.unlink()
    for a, g in zip(arrays[1:], got[1:], strict=True):
        assert g.dtype == a.dtype and g.shape == a.shape
        np.testing.assert_array_equal(g, a)
    assert type(got[-1]) is np.ndarray
