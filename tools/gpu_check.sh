#!/usr/bin/env bash
# The --device cuda check (issue 11), for a machine with a GPU, onnxruntime-gpu, and torch + transformers to
# export the scale models (development only): the device tests (tests/test_device.py, whose CUDA test runs only
# there), then benchmarks/scale.md rows for ResNet-50 and BERT-base at 128 samples, ratio 0.3, with the model's
# runs on cuda and on the same machine's CPU.
#
# Usage, from the repository root:  bash tools/gpu_check.sh OUT_DIR [WORK_DIR]
set -uo pipefail
out=$1
work=${2:-/tmp/onnx-poem-gpu}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "cores: $(nproc)"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_device.py 2>&1 | tee "$out/pytest.log"
python3 tools/export_scale_models.py "$work/models" --only resnet50,bert_base 2>&1 | tail -2
# the original models' outputs through the tool's sessions on cuda against the CPU's (BERT-base's weights are
# handed to onnxruntime in place, onnx_poem.graph._start)
python3 - "$work/models" <<'PY'
import sys
from pathlib import Path

import numpy as np
import onnx

from onnx_poem.device import use_device
from onnx_poem.graph import session

for name in ("resnet50", "bert_base"):
    m = onnx.load(str(Path(sys.argv[1]) / f"{name}.onnx"))
    rng = np.random.default_rng(0)
    feed = {}
    for i in m.graph.input:
        dims = [d.dim_value or 4 for d in i.type.tensor_type.shape.dim]
        dims[0] = 4
        if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            feed[i.name] = rng.standard_normal(dims).astype(np.float32)
        else:
            feed[i.name] = (rng.integers(0, 1000, dims) if "input_ids" in i.name else np.ones(dims)).astype(np.int64)
    cpu = session(m).run(None, feed)
    with use_device("cuda"):
        gpu = session(m).run(None, feed)
    for c, g in zip(cpu, gpu):
        print(name, "max |cuda - cpu| / max |cpu| =", float(np.abs(g - c).max() / np.abs(c).max()))
PY
for spec in "cuda uniform" "cpu uniform" "cuda pro" "cpu pro"; do
    read -r dev alloc <<<"$spec"
    python3 tools/bench_scale.py --models resnet50,bert_base --allocations "$alloc" --device "$dev" \
        --samples 128 --ratios 0.3 --dir "$work/models" --out "$out/scale_${dev}_${alloc}" --work "$work/w"
done
