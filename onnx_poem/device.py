"""Where the model's runs go (``--device cpu|cuda``): onnxruntime's execution providers for every session
that runs the model on its real weights (calibration streams, PRO's probes, verification).

``cpu`` (the default) is onnxruntime's CPU provider.  ``cuda`` puts the calibration passes on onnxruntime's
CUDA provider (the ``onnxruntime-gpu`` package), with the CPU provider behind it for the ops CUDA lacks; the
statistics and the solvers stay in numpy on the CPU.  Sessions that only count shapes (weights stubbed as
zeros) stay on the CPU.

[R, determinism] The same inputs and seed must give the same bytes: the CUDA sessions pick cuDNN's
convolution algorithms by its heuristics (``cudnn_conv_algo_search=DEFAULT``) instead of by timing them
(``EXHAUSTIVE``, onnxruntime's default, can choose another algorithm on another run), and ask for
onnxruntime's deterministic kernels (``use_deterministic_compute``).  [R, accuracy] TF32 is off
(``use_tf32=0``): the statistics are Gram matrices of the captured activations, and TF32's 10-bit
mantissa would put a relative error of about 1e-3 on every product that feeds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import UsageError

#: the devices ``--device`` takes
DEVICES = ("cpu", "cuda")

#: the onnxruntime provider each device needs
PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

#: the CUDA provider's options (see the module docstring)
CUDA_OPTIONS = {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0"}

_DEVICE: ContextVar[str] = ContextVar("onnx_poem_device", default="cpu")


def device() -> str:
    """The device in force (:func:`use_device`; ``cpu`` outside one)."""
    return _DEVICE.get()


def available(name: str) -> bool:
    """Whether this onnxruntime has the provider device ``name`` needs."""
    import onnxruntime as ort

    return PROVIDER[name] in ort.get_available_providers()


def check_device(name: str) -> None:
    """Raise :class:`UsageError` (one line) unless ``name`` is a device this onnxruntime can run on."""
    if name not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if not available(name):
        import onnxruntime as ort

        raise UsageError(
            f"--device {name} needs onnxruntime's {PROVIDER[name]} (the onnxruntime-gpu package, with CUDA and "
            f"cuDNN libraries it can load); this onnxruntime {ort.__version__} has "
            f"{', '.join(ort.get_available_providers())}"
        )


#: devices whose provider has started in this process (:func:`_probe`)
_STARTED: set[str] = set()


def _probe(name: str) -> None:
    """Start a one-node session on device ``name`` once per process, so that a provider onnxruntime lists but
    cannot start (:func:`check_started`) stops a run before its work, not at its first calibration pass."""
    if name == "cpu" or name in _STARTED:
        return
    import onnxruntime as ort

    from .arena import one_node_model

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        started = ort.InferenceSession(one_node_model(), so, providers=_providers_of(name)).get_providers()
    except Exception as e:  # onnxruntime's own error types
        raise UsageError(f"--device {name}: onnxruntime's {PROVIDER[name]} failed to start: {e}") from e
    _check(name, started)
    _STARTED.add(name)


@contextmanager
def use_device(name: str) -> Iterator[None]:
    """Run the block's model sessions on device ``name`` (checked first: :func:`check_device`, and a session
    that must start on it, :func:`_probe`)."""
    check_device(name)
    _probe(name)
    token = _DEVICE.set(name)
    try:
        yield
    finally:
        _DEVICE.reset(token)


def providers(*, values: bool = True) -> list[Any]:
    """onnxruntime's ``providers`` argument for a session in force: the device's, with the CPU provider behind
    it; the CPU alone for a session whose weights are stubbed (``values=False``, shapes only)."""
    return _providers_of(device() if values else "cpu")


def _providers_of(name: str) -> list[Any]:
    """onnxruntime's ``providers`` argument for device ``name``: its provider (with its options), then the CPU's."""
    if name == "cpu":
        return [PROVIDER["cpu"]]
    return [(PROVIDER[name], dict(CUDA_OPTIONS)), PROVIDER["cpu"]]


def check_started(started: Sequence[str], *, values: bool = True) -> None:
    """Raise :class:`UsageError` (one line) if a session of the device in force did not get its provider:
    onnxruntime falls back to the CPU with a warning when the CUDA provider cannot start (no GPU visible, or
    its CUDA / cuDNN libraries not found), and a run would then go on, slowly, on the CPU."""
    _check(device() if values else "cpu", started)


def _check(name: str, started: Sequence[str]) -> None:
    """:func:`check_started` for device ``name``."""
    if name != "cpu" and PROVIDER[name] not in started:
        raise UsageError(
            f"--device {name}: onnxruntime's {PROVIDER[name]} did not start (no GPU visible, or the CUDA and "
            "cuDNN libraries it needs were not found); its session runs on " + ", ".join(started)
        )


def weights_in_place() -> bool:
    """Whether sessions may read the host's weight arrays in place (:func:`onnx_poem.graph._start`): on the CPU
    only.  [measured] With the CUDA provider, sessions given BERT-base's MatMul and Gather weights and
    ResNet-50's Gemm weight that way computed wrong outputs (max |cuda - cpu| about max |cpu|, H200,
    onnxruntime-gpu 1.31.1): some of the CUDA provider's graph rewrites read the weights from the model, where
    such a weight is a stub of zeros.  With every weight copied, an attention block's outputs on CUDA matched
    the CPU's to 1e-4 (``tests/test_device.py``, on the same machine).  Copying costs no GPU memory (the weights
    go to the device either way); the host's peak was higher on CUDA (BERT-base 3085 MiB against 2371 on the CPU,
    ResNet-50 1972 against 1600, ``benchmarks/gpu.md``), the CUDA libraries' resident code and the copies
    together, not measured apart."""
    return device() == "cpu"


def deterministic() -> bool:
    """Whether sessions in force should ask onnxruntime for deterministic kernels (any device but the CPU's,
    whose kernels are deterministic already)."""
    return device() != "cpu"
