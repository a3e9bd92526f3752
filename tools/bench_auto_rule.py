"""How ``--residual auto`` should choose: every candidate's per-sample selection errors and test metric.

Development tool (issue 13).  For each model, MACs target and seed it runs ``prune(..., residual="auto")``
(POEM + PRO, 512 calibration samples: the ``poem+auto+pro`` rows of ``tools/bench.py``) and, for every
candidate policy auto prunes, records the per-sample relative output errors (fitting and selection samples) that
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
    """One auto run: per candidate, its per-sample errors on the fitting and on the selection samples, and its
    metric."""
    import onnx

    import onnx_poem.api as api
    import onnx_poem.pipeline.candidates as candidates
    from onnx_poem.pipeline.context import RunContext
    from onnx_poem.verify import sample_errors

    task = tasks(shared)[model]()
    calib = task.calib(512)
    original = onnx.load(str(shared / "models" / task.model_file))
    seen: dict[str, dict] = {}
    inner = candidates.choice_errors

    def spy(ctx: RunContext, pruned: onnx.ModelProto) -> np.ndarray:
        path = work / f"{model}.{target}.{seed}.{ctx.cfg.residual}.onnx"
        onnx.save(pruned, str(path))
        seen[ctx.cfg.residual] = {
            part: sample_errors(ctx.original, pruned, ctx.data, getattr(ctx.split, part), batch_size=32).tolist()
            for part in ("fit", "select")
        }
        seen[ctx.cfg.residual]["metric"] = task.evaluate(session(str(path), 2))
        return inner(ctx, pruned)

    candidates.choice_errors = spy  # type: ignore[assignment]
    try:
        _, rep = api.prune(original, calib=calib, target_macs=target, seed=seed, residual="auto")
    finally:
        candidates.choice_errors = inner  # type: ignore[assignment]
    return {"model": model, "target": target, "seed": seed, "chosen": rep.residual, "candidates": seen}


def rescore(runs: list[dict], shared: Path, work: Path) -> None:
    """Fill in the fitting and selection errors of records made before they were kept (from the saved
    candidates; the calibration data and split as ``prune`` makes them)."""
    import onnx

    from onnx_poem.calibration.sources import load_calibration
    from onnx_poem.calibration.split import split_samples
    from onnx_poem.fold import fold_constants
    from onnx_poem.verify import sample_errors

    for r in runs:
        if all("fit" in c for c in r["candidates"].values()):
            continue
        task = tasks(shared)[r["model"]]()
        original = fold_constants(onnx.load(str(shared / "models" / task.model_file)))
        data = load_calibration(original, task.calib(512), samples=512, seed=r["seed"])
        split = split_samples(len(data), seed=r["seed"], verify=True)
        for policy, c in r["candidates"].items():
            pruned = onnx.load(str(work / f"{r['model']}.{r['target']}.{r['seed']}.{policy}.onnx"))
            for part in ("fit", "select"):
                c[part] = sample_errors(original, pruned, data, getattr(split, part), batch_size=32).tolist()
            if "errors" in c:
                assert np.allclose(c.pop("errors"), c["select"]), "the selection errors do not reproduce"


def rules() -> dict[str, tuple[tuple[str, ...], float]]:
    """Choice rules: the samples read and the margin (standard errors of the paired mean difference) by which a
    candidate's mean error must be lower to replace the one kept so far."""
    return {
        "selection, 2 SE (session 11)": (("select",), 2.0),
        "selection, 1 SE": (("select",), 1.0),
        "selection, mean only": (("select",), 0.0),
        "fitting + selection, 2 SE": (("fit", "select"), 2.0),
        "fitting + selection, 1 SE": (("fit", "select"), 1.0),
        "fitting only, 2 SE": (("fit",), 2.0),
    }


def choose(candidates: dict[str, dict], parts: tuple[str, ...], z: float) -> str:
    """The policy a rule keeps (candidates in the order auto tries them)."""
    order = [p for p in ("internal", "stream", "project") if p in candidates]

    def errors(p: str) -> np.ndarray:
        return np.concatenate([np.asarray(candidates[p][part]) for part in parts])

    from onnx_poem.pipeline.candidates import clearly_lower

    best = order[0]
    for p in order[1:]:
        if clearly_lower(errors(p), errors(best), z):
            best = p
    return best


def score(runs: list[dict]) -> None:
    for name, (parts, z) in rules().items():
        lost = []
        for r in runs:
            cands = r["candidates"]
            best = choose(cands, parts, z)
            top = max(c["metric"] for c in cands.values())
            lost.append((r["model"], r["target"], r["seed"], best, top - cands[best]["metric"]))
        total = sum(x[-1] for x in lost)
        runs_text = "  ".join(f"{m[8:14]}@{t} s{s}:{p[:3]} -{d:.2f}" for m, t, s, p, d in lost)
        print(f"{name:30s} total loss {total:6.2f}  {runs_text}")


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
    work = Path(a.out + "_models")
    rescore(runs, Path(a.shared), work)
    out.write_text(json.dumps(runs))
    if not a.score_only:
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
