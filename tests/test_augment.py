"""``--augment N``: seeded copies of the fitting images only, fitted beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models import conv_chain, inputs_for, relu_mlp
from onnx_poem import prune
from onnx_poem.calibration import augment as aug
from onnx_poem.calibration.augment import augment_fit, image_axes, transform
from onnx_poem.calibration.sources import CalibrationData
from onnx_poem.cli import main
from onnx_poem.errors import UsageError


def _images(n: int = 6, shape: tuple[int, ...] = (3, 8, 10)) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, *shape)).astype(np.float32)


def test_image_axes() -> None:
    assert image_axes((3, 32, 32)) == 0
    assert image_axes((224, 224, 3)) == 2
    assert image_axes((1, 28, 28)) == 0
    assert image_axes((3, 3, 3)) is None  # ambiguous
    assert image_axes((16, 32, 32)) is None  # feature maps, not an image
    assert image_axes((128, 64)) is None


def test_transform_without_zoom_or_shift_is_the_image_or_its_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aug, "SCALE", 0.0)
    monkeypatch.setattr(aug, "SHIFT", 0.0)
    x = _images(1)[0]
    seen = set()
    for seed in range(8):
        y = transform(x, 0, np.random.default_rng(seed))
        flipped = not np.array_equal(y, x)
        if flipped:
            np.testing.assert_array_equal(y, x[:, :, ::-1])
        seen.add(flipped)
        # channels last: the same draws give the same picture
        np.testing.assert_array_equal(
            np.moveaxis(transform(np.moveaxis(x, 0, 2), 2, np.random.default_rng(seed)), 2, 0), y
        )
    assert seen == {True, False}


def test_transform_shifts_by_the_drawn_amount(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pure shift by whole pixels moves the interior exactly (bilinear sampling on the grid)."""
    monkeypatch.setattr(aug, "SCALE", 0.0)
    x = _images(1, (1, 20, 20))[0]

    class Draws:
        def uniform(self, lo: float, hi: float, size: int | None = None) -> object:
            return 1.0 if size is None else np.array([0.1, -0.15])  # zoom 1; shift (2, -3) pixels

        def random(self) -> float:
            return 0.9  # no flip

    y = transform(x, 0, Draws())  # type: ignore[arg-type]
    # t = (0.1, -0.15)·(20, 20) = (2, -3): y[i, j] = x[i - 2, j + 3]
    np.testing.assert_allclose(y[0, 2:, :17], x[0, :-2, 3:], rtol=0, atol=1e-6)


def test_augment_fit_appends_seeded_copies_of_fitting_samples_only(tmp_path: Path) -> None:
    x = _images()
    ids = np.arange(6, dtype=np.int64)[:, None] * np.ones((1, 4), dtype=np.int64)
    data = CalibrationData({"img": x, "ids": ids})
    fit = np.array([1, 4])
    for d in "abc":
        (tmp_path / d).mkdir()
    out, copies = augment_fit(data, fit, 2, seed=5, workdir=tmp_path / "a")
    assert len(out) == 10 and copies.tolist() == [6, 7, 8, 9]
    np.testing.assert_array_equal(out.arrays["img"][:6], x)
    np.testing.assert_array_equal(out.arrays["ids"][6:, 0], [1, 1, 4, 4])  # other inputs copied as they are
    for j, src in enumerate([1, 1, 4, 4]):
        expect = transform(x[src], 0, np.random.default_rng([5, 11, j]))
        np.testing.assert_array_equal(out.arrays["img"][6 + j], expect)
        assert not np.allclose(expect, x[src])
    again, _ = augment_fit(data, fit, 2, seed=5, workdir=tmp_path / "b")
    np.testing.assert_array_equal(again.arrays["img"], out.arrays["img"])
    other, _ = augment_fit(data, fit, 2, seed=6, workdir=tmp_path / "c")
    assert not np.array_equal(other.arrays["img"][6:], out.arrays["img"][6:])


def test_augment_needs_an_image_input(tmp_path: Path) -> None:
    data = CalibrationData({"x": np.zeros((4, 16), dtype=np.float32)})
    with pytest.raises(UsageError, match="image input"):
        augment_fit(data, np.arange(2), 1, seed=0, workdir=tmp_path)


def test_prune_with_augment_fits_copies_and_keeps_the_checks_real() -> None:
    model = conv_chain()
    calib = {"x": inputs_for(model, 64)}
    _, plain = prune(model, calib=calib, ratio=0.5)
    pruned, rep = prune(model, calib=calib, ratio=0.5, augment=2)
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.calibration_samples == plain.calibration_samples
    assert rep.augmented_samples == 2 * rep.calibration_samples
    assert rep.selection_samples == plain.selection_samples
    assert rep.verification_samples == plain.verification_samples
    # the statistics saw the copies: every layer's sample count grew with them
    assert all(a.samples > b.samples for a, b in zip(rep.layers, plain.layers, strict=True))
    again, _ = prune(model, calib=calib, ratio=0.5, augment=2)
    assert again.SerializeToString() == pruned.SerializeToString()


def test_cli_augment(tmp_path: Path) -> None:
    model = relu_mlp()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    np.save(tmp_path / "x.npy", inputs_for(model, 32))
    res = CliRunner().invoke(
        main,
        [
            str(src),
            "--ratio",
            "0.5",
            "--calib",
            str(tmp_path / "x.npy"),
            "-o",
            str(tmp_path / "o.onnx"),
            "--augment",
            "1",
        ],
    )
    assert res.exit_code == 2
    assert "image input" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
    res = CliRunner().invoke(main, [str(src), "--ratio", "0.5", "--augment", "17"])
    assert res.exit_code == 2
