"""How ``--residual auto`` should choose: every candidate's per-sample selection errors and test metric.

Development tool (issue 13).  For each model, MACs target and seed it runs ``prune(..., residual="auto")``
(POEM + PRO, 512 calibration samples: the ``poem+auto+pro`` rows of ``tools/bench.py``) and, for every
candidate policy auto prunes, records the per-sample relative output errors on the selection samples that
the choice reads and the candidate's metric on the BENCHMARK.md evaluation split.  Candidates are
byte-identical to runs with that ``--residual`` given (``tests/test_srn.py``), so the metric is the fixed
policy's.  Then it scores choice rules on the recorded errors::

    python tools/bench_auto_rule.py --models cifar10_resnet20 --targets 0.5,0.7 --seeds 0,1,2 \
        --shared ../shared --out /tmp/auto_rule

writes ``<out>.json`` (one record per run) and prints, per rule, what it picks and the metric it gets
against the best candidate of each run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import session, tasks


def record(model: str, target: float, seed: int, shared: Path, work: Path) -> dict:
    """One auto run: per candidate, its selection errors and metric."""
    import onnx

    import onnx_poem.api as api

    task = tasks(shared)[model]()
    calib = task.calib(512)
    original = onnx.load(str(shared / "models" / task.model_file))
    seen: dict[str, dict] = {}
    inner = api._selection_errors

    def spy(ctx: api.RunContext, pruned: onnx.ModelProto) -> np.ndarray:
        errors = inner(ctx, pruned)
        path = work / f"{model}.{target}.{seed}.{ctx.cfg.residual}.onnx"
        onnx.save(pruned, str(path))
        seen[ctx.cfg.residual] = {"errors": errors.tolist(), "metric": task.evaluate(session(str(path), 2))}
        return errors

    api._selection_errors = spy  # type: ignore[assignment]
    try:
        _, rep = api.prune(original, calib=calib, target_macs=target, seed=seed, residual="auto")
    finally:
        api._selection_errors = inner  # type: ignore[assignment]
    return {"model": model, "target": target, "seed": seed, "chosen": rep.residual, "candidates": seen}


def rules() -> dict[str, object]:
    """Choice rules: candidate → replaces the kept one when the paired statistic clears the margin."""

    def paired(z: float, log: bool):
        def better(new: np.ndarray, old: np.ndarray) -> bool:
            d = np.log(new + 1e-12) - np.log(old + 1e-12) if log else new - old
            return bool(len(d) > 1 and d.mean() + z * d.std(ddof=1) / np.sqrt(len(d)) < 0)

        return better

    return {
        "mean, 2 SE (shipped)": paired(2.0, False),
        "mean, 1 SE": paired(1.0, False),
        "mean only": paired(0.0, False),
        "log ratio, 2 SE": paired(2.0, True),
        "log ratio, 1 SE": paired(1.0, True),
        "log ratio only": paired(0.0, True),
    }


def score(runs: list[dict]) -> None:
    for name, better in rules().items():
        lost = []
        for r in runs:
            cands = r["candidates"]
            order = [p for p in ("internal", "stream", "project") if p in cands]
            best = order[0]
            for p in order[1:]:
                if better(np.asarray(cands[p]["errors"]), np.asarray(cands[best]["errors"])):  # type: ignore[operator]
                    best = p
            top = max(c["metric"] for c in cands.values())
            lost.append((r["model"], r["target"], r["seed"], best, top - cands[best]["metric"]))
        total = sum(x[-1] for x in lost)
        runs_text = "  ".join(f"{m[8:14]}@{t} s{s}:{p[:3]} -{d:.2f}" for m, t, s, p, d in lost)
        print(f"{name:24s} total loss {total:6.2f}  {runs_text}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True)
    p.add_argument("--targets", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shared", default="../shared")
    p.add_argument("--out", required=True)
    p.add_argument("--score-only", action="store_true", help="score the rules on <out>.json; run nothing")
    a = p.parse_args()
    out = Path(a.out + ".json")
    runs = json.loads(out.read_text()) if out.exists() else []
    if not a.score_only:
        work = Path(a.out + "_models")
        work.mkdir(parents=True, exist_ok=True)
        done = {(r["model"], r["target"], r["seed"]) for r in runs}
        for model in a.models.split(","):
            for target in map(float, a.targets.split(",")):
                for seed in map(int, a.seeds.split(",")):
                    if (model, target, seed) in done:
                        continue
                    runs.append(record(model, target, seed, Path(a.shared), work))
                    out.write_text(json.dumps(runs))
                    r = runs[-1]
                    print(model, target, seed, r["chosen"], {k: v["metric"] for k, v in r["candidates"].items()})
    score(runs)


if __name__ == "__main__":
    main()
