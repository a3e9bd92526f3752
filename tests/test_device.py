"""``--device cpu|cuda``: the providers of the model's sessions, the one-line refusal where CUDA is missing, and
(where onnxruntime's CUDA provider is there) a CUDA run that agrees with the CPU's and repeats byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from models import attention, attention_inputs, conv_chain, inputs_for
from onnx_poem import device as device_module
from onnx_poem import prune
from onnx_poem.cli import main
from onnx_poem.config import PruneConfig
from onnx_poem.device import CUDA_OPTIONS, available, device, providers, use_device
from onnx_poem.errors import UsageError
from onnx_poem.graph import session

ROOT = Path(__file__).resolve().parents[1]
CUDA = available("cuda")


def _cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])


def _cuda_cli_error(tmp_path: Path) -> str:
    """The one line a pruning run with ``--device cuda`` prints here (exit 2, nothing written)."""
    model = conv_chain()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 16))
    res = CliRunner().invoke(
        main, [str(tmp_path / "m.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "c.npz"), "--device", "cuda"]
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "m.onnx"]
    return lines[0]


def test_the_default_device_is_the_cpu() -> None:
    assert device() == "cpu" and providers() == ["CPUExecutionProvider"]
    assert session(conv_chain()).get_providers() == ["CPUExecutionProvider"]


def test_cuda_sessions_ask_for_cuda_then_the_cpu_and_shapes_stay_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(device_module, "_STARTED", {"cuda"})  # as if its probe session had started
    with use_device("cuda"):
        assert device() == "cuda"
        assert providers() == [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
        assert providers(values=False) == ["CPUExecutionProvider"]
    assert device() == "cpu"


def test_cuda_without_its_provider_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu_only(monkeypatch)
    with pytest.raises(UsageError, match="onnxruntime-gpu"), use_device("cuda"):
        pass
    assert "CUDAExecutionProvider (the onnxruntime-gpu package" in _cuda_cli_error(tmp_path)


@pytest.mark.skipif(CUDA, reason="here the CUDA provider is there: it starts")
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_cuda_provider_that_does_not_start_is_one_line_not_a_cpu_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime falls back to the CPU, with a warning, when the provider asked for cannot start; here a CPU
    build claims CUDA (as onnxruntime-gpu does on a machine without a GPU): the run stops with one line."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UsageError, match="did not start"), use_device("cuda"):
        pass
    monkeypatch.setattr(device_module, "device", lambda: "cuda")  # a session's own check, past the probe
    with pytest.raises(UsageError, match="did not start"):
        session(conv_chain())
    assert _cuda_cli_error(tmp_path).startswith("error: --device cuda: onnxruntime's CUDAExecutionProvider did not")


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(UsageError, match="device must be one of cpu, cuda"):
        PruneConfig(ratio=0.5, device="tpu").validate()
    res = CliRunner().invoke(main, ["m.onnx", "--ratio", "0.5", "--device", "tpu"])
    assert res.exit_code == 2 and "tpu" in res.output


@pytest.mark.skipif(not CUDA, reason="onnxruntime's CUDA provider is not available here")
def test_cuda_sessions_match_the_cpu_on_large_matmul_weights() -> None:
    """An encoder attention block whose MatMul weights (256 KB each) the CPU sessions read in place: on CUDA
    they are copied (:func:`onnx_poem.device.weights_in_place`), and the outputs match the CPU's."""
    model = attention(heads=8, size=32)
    feed = attention_inputs(8, 16, e=256)
    cpu = session(model).run(None, feed)[0]
    with use_device("cuda"):
        gpu = session(model).run(None, feed)[0]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * float(np.abs(cpu).max()))


@pytest.mark.skipif(not CUDA, reason="onnxruntime's CUDA provider is not available here")
def test_a_cuda_prune_agrees_with_the_cpu_and_repeats_byte_for_byte() -> None:
    """The README demo's model on 128 of its samples: the original's outputs on CUDA match the CPU's; a CUDA
    prune is byte-identical when repeated, keeps as many channels, and its outputs are close to the CPU
    prune's (the two read activations that differ in rounding, so their choices may differ at ties)."""
    model = onnx.load(ROOT / "models" / "cifar10_resnet20.onnx")
    data = np.load(ROOT / "models" / "cifar10_calib256.npz")
    x = data[data.files[0]][:128]
    name = model.graph.input[0].name
    cpu = session(model).run(None, {name: x[:32]})[0]
    with use_device("cuda"):
        sess = session(model)
        assert sess.get_providers()[0] == "CUDAExecutionProvider"
        gpu = sess.run(None, {name: x[:32]})[0]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * float(np.abs(cpu).max()))
    runs = [prune(model, calib=x, ratio=0.5, samples=128, device=d) for d in ("cuda", "cuda", "cpu")]
    (a, ra), (b, _), (c, rc) = runs  # two CUDA runs, then the CPU's
    assert a.SerializeToString() == b.SerializeToString()
    assert [g["kept"] for g in ra.groups] == [g["kept"] for g in rc.groups]
    oa = session(a).run(None, {name: x[:64]})[0]
    oc = session(c).run(None, {name: x[:64]})[0]
    assert np.mean(oa.argmax(1) == oc.argmax(1)) >= 0.95
