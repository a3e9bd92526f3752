"""Command line: ``onnx-poem MODEL.onnx --ratio R`` and ``onnx-poem inspect MODEL.onnx``.

Flags, logging, progress bars and exit codes live here; no numerics.
Exit codes: 0 success, 1 bad model/data/verification, 2 usage error.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import onnx

from . import __version__, planfile
from .api import ALLOCATIONS, apply_saved_plan, run, run_family
from .calibration.sources import ImageOptions
from .config import RESIDUALS, SERIALISED_FORMS, STREAM_GROUPS
from .device import DEVICES, use_device
from .errors import ModelError, PoemError, UsageError
from .external import encode
from .graph import GraphView, declared_shape, input_files, load_model
from .htmlreport import render_html
from .modelio import output_files, stores_external
from .outputs import check_outputs, write_together
from .report import PruneReport
from .solvers import METHODS
from .threads import limit_threads

logger = logging.getLogger("onnx_poem")


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``prune``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("onnx_poem")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    import onnxruntime as ort

    # onnxruntime's own warnings (the CUDA provider's "Conv running in Fallback mode" per layer) only with -vv
    ort.set_default_logger_severity(3 if verbose < 2 else 2)


def _fail(e: Exception, debug: bool) -> None:
    if debug:
        raise e
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    click.echo(f"error: {msg}", err=True)
    sys.exit(2 if isinstance(e, UsageError) else 1)


class _Progress:
    """A click progress bar over groups, shown only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled or total == 0:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="pruning", file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.label = f"pruning {label[-40:]:40}" if label else "pruning"
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as e:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from e


def _latency_target(text: str | None) -> tuple[float | None, float | None]:
    """``--target-latency``: ``(fraction, None)`` for ``0.6``, ``(None, milliseconds)`` for ``12ms``."""
    if text is None:
        return None, None
    value = text.strip().lower()
    ms = value.endswith("ms")
    try:
        number = float(value.removesuffix("ms"))
    except ValueError:
        raise click.BadParameter(f"expected a fraction such as 0.6 or milliseconds (12ms), got {text!r}") from None
    if ms:
        if not number > 0:
            raise click.BadParameter(f"milliseconds must be > 0, got {text!r}")
        return None, number
    if not 0.0 < number <= 1.0:
        raise click.BadParameter(f"a fraction of the original's latency must be in (0, 1] (or give ms), got {text!r}")
    return number, None


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p]
    except ValueError as e:
        raise UsageError(f"--input-size: expected HxW, got {text!r}") from e
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise UsageError(f"--input-size: expected HxW with H, W >= 1, got {text!r}")
    return vals[0], vals[1]


class _HiddenType(click.ParamType):
    """``--hidden``: a fraction in [0, 1) or ``auto``."""

    name = "F|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or value == "auto":
            return value  # type: ignore[no-any-return]
        try:
            f = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a fraction nor auto", param, ctx)
        if not 0.0 <= f < 1.0:
            self.fail(f"{f} is not in [0, 1)", param, ctx)
        return f


def _hidden_options(hidden: float | str) -> dict[str, Any]:
    """The :class:`onnx_poem.PruneConfig` fields of ``--hidden``."""
    return {"hidden_auto": True} if hidden == "auto" else {"hidden": float(hidden)}


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-poem")
def main() -> None:
    """Structured pruning of ONNX models with output-error-minimising reconstruction (POEM).

    \b
    onnx-poem MODEL.onnx --ratio 0.5 --calib data.npz    prune (the default command)
    onnx-poem inspect MODEL.onnx                          show what can be pruned
    onnx-poem ops                                         the ops channels are followed through
    """


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--ratio",
    "-r",
    callback=lambda ctx, param, value: _ratios(value),
    help="Pruning budget, 0 <= R < 1: the MACs that removing R of the units of every prunable layer "
    "would save (with --allocation uniform: exactly that).  Several, comma-separated (0.2,0.3,0.5): "
    "a family, one model per value (OUT.r0.2.onnx, ...) from one calibration pass and one allocation curve.",
)
@click.option(
    "--target-macs",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Instead of --ratio: reach this fraction of the original MACs (e.g. 0.7).",
)
@click.option(
    "--target-latency",
    callback=lambda ctx, param, value: _latency_target(value),
    help="Instead of --ratio: reach this latency on --latency-on at --batch, as a fraction of the original's "
    "measured latency (0.6) or in milliseconds (12ms). Per-layer latencies are measured on that runtime "
    "(cached) and PRO spends the budget per measured second; the result is timed whole until it meets the target.",
)
@click.option(
    "--latency-on",
    help="Runtime to measure latency on: ort-cpu[:threads] (default with --target-latency), openvino[:threads], "
    "ort-cuda, tensorrt. Given alone, the report gives the pruned model's measured latency.",
)
@click.option(
    "--batch",
    "latency_batch",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Batch size the latency is measured at.",
)
@click.option(
    "--latency-cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of cached latency tables [default: $ONNX_POEM_CACHE or ~/.cache/onnx-poem].",
)
@click.option(
    "--calib",
    "-c",
    type=click.Path(path_type=Path),
    help=".npz (keyed by input name), .npy (single input) or a folder of images.",
)
@click.option("--method", "-m", type=click.Choice(METHODS), default="poem", show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["cascade", "parallel"]),
    default="cascade",
    show_default=True,
    help="cascade: inputs from the already-pruned prefix; parallel: from the original model.",
)
@click.option(
    "--allocation",
    type=click.Choice(ALLOCATIONS),
    default="pro",
    show_default=True,
    help="pro: per-layer counts that spend the budget where the measured error at the model's output per "
    "MAC saved is smallest (one extra calibration pass); uniform: every layer loses the same fraction.",
)
@click.option(
    "--round-to",
    type=click.IntRange(1),
    help="Keep channel counts that are multiples of K (rounded up), e.g. 8 or 16 for SIMD kernels "
    "[default: 1; with --target-latency the step measured on the runtime].",
)
@click.option(
    "--residual",
    type=click.Choice(RESIDUALS),
    default="internal",
    show_default=True,
    help="Residual streams: internal prunes inside the blocks only (measured best or tied with PRO on the "
    "CIFAR ResNets and EfficientNet-Lite0, except ResNet-20 at half the MACs, where project won by 1.5 points); "
    "stream also the channels residual adds join (one set per stream); srn "
    "serialises each block first (its input carried through as channels, ALGORITHMS.md 8) so every block's "
    "channels, the residual ones included, are pruned on their own; project turns every identity or strided "
    "shortcut into a 1x1 conv so each block's output width is pruned on its own (srn and project raise the MACs "
    "first; budgets stay against the original's); auto prunes with internal, stream and project (where they "
    "apply) and keeps another than internal only when it is clearly closer to the original on the fitting and "
    "selection samples (up to three times the time).",
)
@click.option("--prune-residual", is_flag=True, hidden=True, help="Same as --residual stream (older name).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output model [default: MODEL.poem.onnx beside the input].",
)
@click.option(
    "--samples",
    "-n",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Calibration samples to use at most.",
)
@click.option(
    "--positions",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Sampled output positions per image for the statistics.",
)
@click.option(
    "--damping",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Ridge of the selection and reconstruction toward the original weights, relative to the Gram's "
    "mean diagonal.  [default: 0.1 for groups whose consumers read token sequences (transformers), "
    "0.01 for the others]",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--augment",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="Seeded augmented copies (flip, shift, zoom) of every fitting image, fitted beside it.",
)
@click.option(
    "--hidden",
    type=_HiddenType(),
    default="0",
    show_default=True,
    help="First remove this fraction of a transformer's hidden size (ViT, LLaMA-style decoders; post-LN encoders "
    "such as BERT pay a (k, k) matrix per LayerNorm), by rotating its residual stream to its principal directions "
    "(SliceGPT-style, one rotation; ALGORITHMS.md 10); the budget stays against the original's MACs and the rest "
    "of it goes to heads and neurons. Measured on a trained byte-level LLaMA at 0.7 / 0.5 of the MACs: 0.2 / 0.3 "
    "kept 66.43 / 62.65 % next-byte accuracy where heads and neurons alone kept 65.05 / 57.05 (original 66.80); "
    "on a CIFAR ViT closer to the original at 0.5, accuracy within noise (benchmarks/hidden.md). auto: prune with "
    "0, 0.1, 0.2, 0.3 and 0.4 sliced and keep a larger fraction only when it is clearly closer to the original on "
    "the fitting and selection samples (five prunes' time).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="Threads for onnxruntime and BLAS (default: every core).",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="cpu",
    show_default=True,
    help="Where the calibration, probe and verification passes run: cuda needs onnxruntime's CUDA provider "
    "(the onnxruntime-gpu package); the statistics and solvers stay on the CPU.",
)
@click.option(
    "--verify-data",
    type=click.Path(path_type=Path),
    help="Separate verification set (same formats as --calib; labels from an npz array 'labels' or one image "
    "sub-folder per class): agreement (and accuracy) measured there; every --calib sample is then used for fitting.",
)
@click.option(
    "--synthetic",
    is_flag=True,
    help="Without --calib, prune on synthetic standard-normal inputs anyway (this wrecks accuracy on real data).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here: a self-contained HTML page for .html (charts of the kept channels, PRO's error "
    "curves, agreement), JSON otherwise.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Analyse, calibrate and allocate only: print what would be kept per group and the predicted MACs; "
    "write no model.",
)
@click.option(
    "--save-plan",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the plan: PLAN.json (what is kept) and PLAN.npz (the new weights), to --apply-plan later.",
)
@click.option(
    "--apply-plan",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Apply a saved plan to the same model instead of pruning (no calibration needed; with --calib the "
    "agreement is measured on it). Gives the model the planning run wrote, byte for byte.",
)
@click.option("--force", "-f", is_flag=True, help="Overwrite existing output and report files.")
@click.option("--allow-unpruned", is_flag=True, help="Write the model even if nothing could be pruned.")
@click.option("--input-size", help="Image folder: resize to HxW [default: the model's input size].")
@click.option("--mean", help="Image folder: per-channel mean after scaling, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Image folder: per-channel std after scaling, e.g. 0.229,0.224,0.225.")
@click.option("--scale", type=float, default=1 / 255, show_default="1/255", help="Image folder: pixel scale.")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), help="Image folder: tensor layout.")
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.option("--quiet", "-q", is_flag=True, help="Only errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune_cmd(
    model: Path,
    ratio: list[float] | None,
    target_macs: float | None,
    target_latency: tuple[float | None, float | None],
    latency_on: str | None,
    latency_batch: int,
    latency_cache: Path | None,
    calib: Path | None,
    method: str,
    mode: str,
    allocation: str,
    round_to: int | None,
    residual: str,
    prune_residual: bool,
    output: Path | None,
    samples: int,
    positions: int,
    damping: float | None,
    seed: int,
    threads: int | None,
    device: str,
    augment: int,
    hidden: float | str,
    verify_data: Path | None,
    synthetic: bool,
    report: Path | None,
    dry_run: bool,
    save_plan: Path | None,
    apply_plan: Path | None,
    force: bool,
    allow_unpruned: bool,
    input_size: str | None,
    mean: str | None,
    std: str | None,
    scale: float,
    layout: str | None,
    verbose: int,
    quiet: bool,
    debug: bool,
) -> None:
    """Prune MODEL and write a smaller ONNX model."""
    _setup_logging(verbose, quiet)
    latency_fraction, latency_ms = target_latency
    budgets = sum(b is not None for b in (ratio, target_macs, latency_fraction or latency_ms))
    if apply_plan is not None:
        if budgets or dry_run or save_plan is not None or latency_on is not None:
            raise click.UsageError(
                "--apply-plan takes its budget from the plan: no --ratio, --target-macs, --target-latency, "
                "--latency-on, --dry-run or --save-plan with it"
            )
    elif budgets != 1:
        raise click.UsageError("give exactly one of --ratio, --target-macs and --target-latency")
    if hidden and save_plan is not None:
        raise click.UsageError(
            "--save-plan does not record --hidden's rotation: a plan of a sliced model cannot be applied"
        )
    if dry_run and save_plan is not None:
        raise click.UsageError("--dry-run solves nothing, so it has no plan to save")
    if ratio is not None and len(ratio) > 1 and (dry_run or save_plan is not None):
        raise click.UsageError("a family of ratios writes models: no --dry-run or --save-plan with it")
    if synthetic and calib is not None:
        raise click.UsageError("--synthetic replaces --calib: give one of them")
    if prune_residual:
        if residual not in ("internal", "stream"):
            raise click.UsageError(f"--prune-residual means --residual stream, not {residual}")
        residual = "stream"
    try:
        out = output or model.with_name(model.name.removesuffix(".onnx") + ".poem.onnx")
        if not model.is_file():
            raise ModelError(f"model file not found: {model}" if not model.exists() else f"not a file: {model}")
        family = ratio if ratio is not None and len(ratio) > 1 else None
        if family is not None:
            _family(model, family, out, report, calib, force, quiet, debug, method=method, mode=mode,
                    samples=samples, positions=positions, damping=damping, seed=seed, verify_data=verify_data,
                    threads=threads, device=device, augment=augment, **_hidden_options(hidden), residual=residual,
                    allocation=allocation,
                    round_to=round_to, synthetic=synthetic, latency_on=latency_on, latency_batch=latency_batch,
                    latency_cache=None if latency_cache is None else str(latency_cache),
                    allow_unpruned=allow_unpruned, image_options=ImageOptions(size=_size(input_size),
                    mean=_floats(mean) or (0.0,), std=_floats(std) or (1.0,), scale=scale, layout=layout))  # fmt: skip
            return
        ratio_value = ratio[0] if ratio is not None else None
        external = stores_external(model)
        outputs = (
            {}
            if dry_run
            else {("output data" if i else "output"): p for i, p in enumerate(output_files(out, external=external))}
        )
        outputs |= {"report": report} if report is not None else {}
        if save_plan is not None:
            outputs |= {"plan": save_plan, "plan weights": planfile.arrays_path(save_plan)}
        plan_files = [apply_plan, planfile.arrays_path(apply_plan)] if apply_plan is not None else []
        check_outputs([*input_files(model), *plan_files], outputs, force=force)
        opts = ImageOptions(
            size=_size(input_size), mean=_floats(mean) or (0.0,), std=_floats(std) or (1.0,), scale=scale, layout=layout
        )
        progress = _Progress(sys.stderr.isatty() and not quiet)
        with _terminate_as_interrupt() as term, limit_threads(threads), use_device(device):
            files: dict[Path, bytes | Iterable[bytes]] = {}
            pruned: onnx.ModelProto | None
            if apply_plan is not None:
                pruned, rep = apply_saved_plan(model, apply_plan, calib=calib, image_options=opts, samples=samples)
            else:
                result = run(
                    model,
                    ratio=ratio_value,
                    target_macs=target_macs,
                    calib=calib,
                    method=method,
                    mode=mode,
                    samples=samples,
                    positions=positions,
                    damping=damping,
                    seed=seed,
                    device=device,
                    augment=augment,
                    **_hidden_options(hidden),
                    image_options=opts,
                    verify_data=verify_data,
                    progress=progress,
                    residual=residual,
                    allocation=allocation,
                    round_to=round_to,
                    synthetic=synthetic,
                    dry_run=dry_run,
                    target_latency=latency_fraction,
                    target_latency_ms=latency_ms,
                    latency_on=latency_on,
                    latency_batch=latency_batch,
                    latency_cache=None if latency_cache is None else str(latency_cache),
                )
                pruned, rep = result.model, result.report
                if save_plan is not None:
                    files |= planfile.encode(result.plan, result.context, save_plan)
            for u in rep.unprunable:
                logger.info("not pruned: %s: %s", u["where"], u["reason"])
            for w in rep.warnings:
                logger.warning("%s", w)
            if pruned is not None and rep.ratio > 0 and not allow_unpruned and apply_plan is None:
                _refuse_unpruned(rep)
            if pruned is not None:
                files |= encode(pruned, out, external=external)
            if report is not None:
                files[report] = report_bytes(report, rep)
            term.check()
            write_together(files, force=force)
        if not quiet:
            click.echo(rep.summary())
            if files:
                click.echo(f"written      {', '.join(str(f) for f in files)}")
    except KeyboardInterrupt:
        click.echo("error: interrupted; nothing written", err=True)
        sys.exit(130)
    except MemoryError as e:
        _fail(PoemError(f"not enough memory ({e}); try fewer --samples or a smaller --input-size"), debug)
    except PoemError as e:
        _fail(e, debug)
    except Exception as e:  # a bug or an onnxruntime failure: still one line, the traceback with --debug
        if debug:
            raise
        _fail(PoemError(f"internal error ({type(e).__name__}: {e}); rerun with --debug for the traceback"), debug)


def _refuse_unpruned(rep: PruneReport) -> None:
    """Refuse to write a model in which no group lost a channel (``--allow-unpruned`` writes it anyway)."""
    if not any(g["kept"] < g["channels"] for g in rep.groups):
        raise PoemError(
            "nothing in this model could be pruned (see `onnx-poem inspect`); "
            "nothing written (use --allow-unpruned to write it anyway)"
        )


def _ratios(value: str | None) -> list[float] | None:
    """``--ratio``: one value or a comma-separated family, each in ``[0, 1)``."""
    if value is None:
        return None
    try:
        ratios = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or a comma-separated list of numbers") from None
    bad = [r for r in ratios if not 0.0 <= r < 1.0]
    if not ratios or bad:
        raise click.BadParameter(f"every ratio must be in [0, 1), got {value!r}")
    if len(set(ratios)) != len(ratios):
        raise click.BadParameter(f"the ratios of a family must differ, got {value!r}")
    return ratios


def report_bytes(path: Path, rep: PruneReport, family: list[PruneReport] | None = None) -> bytes:
    """The report to write at ``path``: a self-contained HTML page for ``.html``/``.htm``, else JSON."""
    if path.suffix.lower() in (".html", ".htm"):
        return render_html(rep, family or ()).encode()
    return (rep.to_json() + "\n").encode()


def family_path(path: Path, ratio: float) -> Path:
    """Where a family's model (or report) for ``ratio`` goes: ``OUT.r0.3.onnx`` beside ``OUT.onnx``."""
    return path.with_name(f"{path.stem}.r{ratio:g}{path.suffix}")


def _family(
    model: Path,
    ratios: list[float],
    out: Path,
    report: Path | None,
    calib: Path | None,
    force: bool,
    quiet: bool,
    debug: bool,
    *,
    allow_unpruned: bool,
    image_options: ImageOptions,
    **options: Any,
) -> None:
    """``--ratio 0.2,0.3,0.5``: one model (and report) per ratio, written together, and a trade-off table."""
    external = stores_external(model)
    outputs = {
        f"output{' data' if i else ''} (ratio {r:g})": p
        for r in ratios
        for i, p in enumerate(output_files(family_path(out, r), external=external))
    }
    if report is not None:
        outputs |= {f"report (ratio {r:g})": family_path(report, r) for r in ratios}
    check_outputs(input_files(model), outputs, force=force)
    progress = _Progress(sys.stderr.isatty() and not quiet)
    with _terminate_as_interrupt() as term:
        results = run_family(model, ratios, calib=calib, image_options=image_options, progress=progress, **options)
        files: dict[Path, bytes | Iterable[bytes]] = {}
        for r, res in zip(ratios, results, strict=True):
            rep = res.report
            for w in rep.warnings:
                logger.warning("ratio %g: %s", r, w)
            if r > 0 and not allow_unpruned:
                _refuse_unpruned(rep)
            assert res.model is not None
            files |= encode(res.model, family_path(out, r), external=external)
            if report is not None:
                files[family_path(report, r)] = report_bytes(report, rep, [res.report for res in results])
        term.check()
        write_together(files, force=force)
    if not quiet:
        for r, res in zip(ratios, results, strict=True):
            click.echo(f"--- ratio {r:g}: {family_path(out, r)}")
            click.echo(res.report.summary())
        click.echo(family_table(ratios, [res.report for res in results], [family_path(out, r) for r in ratios]))


def family_table(ratios: list[float], reports: list[PruneReport], paths: list[Path]) -> str:
    """The family's trade-off: MACs, parameters and agreement with the original per ratio."""
    lines = ["family       ratio    MACs  params  agreement (verification samples)        time (s)  file"]
    for r, rep, path in zip(ratios, reports, paths, strict=True):
        first = next(iter(rep.agreement.values()), {})
        if "top1_agreement" in first:
            agree = f"top-1 {100 * first['top1_agreement']:.1f} %"
        elif "cosine" in first:
            agree = f"cosine {first['cosine']:.4f}"
        else:
            agree = f"rel. error {first.get('rel_error', float('nan')):.4f}"
        agree += f" ({rep.verification.get('samples', 0)})"
        seconds = rep.timings.get("total", 0.0)
        lines.append(
            f"             {r:<6g} {rep.macs_ratio:6.3f} {rep.params_ratio:7.3f}  {agree:<40s} {seconds:8.1f}  {path}"
        )
    shared = reports[0].timings.get("family_shared") if reports else None
    if shared is not None:
        lines.append(f"             shared by all: load, analysis, PRO's curves {shared:.1f} s")
    return "\n".join(lines)


class _Termination:
    """Whether SIGTERM arrived (see :func:`_terminate_as_interrupt`)."""

    received = False

    def check(self) -> None:
        """Raise KeyboardInterrupt if SIGTERM arrived, even if the one its handler raised was lost."""
        if self.received:
            raise KeyboardInterrupt


@contextmanager
def _terminate_as_interrupt() -> Iterator[_Termination]:
    """Turn SIGTERM into KeyboardInterrupt while pruning, so temporary folders and files are removed.

    The handler also records the signal: a KeyboardInterrupt raised while the interpreter runs a finalizer
    (the per-group garbage collection runs many) is printed and dropped by Python, and the run would go on
    to write its outputs; callers :meth:`_Termination.check` before writing (seen once in CI: a SIGTERM
    sent early in the demo's run, which then wrote its model and exited 0)."""
    term = _Termination()

    def handler(signum: int, frame: Any) -> None:
        term.received = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. an embedding application): leave signals alone
        yield term
        return
    try:
        yield term
    finally:
        signal.signal(signal.SIGTERM, previous)


def _probe_shapes(model: onnx.ModelProto) -> dict[str, list[int]] | None:
    """Concrete input shapes for ``inspect`` to observe the shapes inference leaves open (TorchScript's
    computed head reshapes), as ``prune`` does at the calibration shapes: symbolic dimensions become 1
    (batch) and :data:`PROBE_DIM` (others).  ``None`` where an input's rank is unknown; a run that fails
    at these shapes leaves the inferred ones (``GraphView._observe``)."""
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.tensor_type.HasField("shape"):
            return None
        dims = declared_shape(model, vi.name)
        shapes[vi.name] = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else PROBE_DIM) for i, d in enumerate(dims)
        ]
    return shapes


#: the size ``inspect`` gives a symbolic dimension other than the first
PROBE_DIM = 16


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--residual",
    type=click.Choice([r for r in RESIDUALS if r != "auto"]),
    default="internal",
    show_default=True,
    help="Analyse as the prune command would (stream: residual streams as groups; srn: serialised blocks).",
)
@click.option("--prune-residual", is_flag=True, hidden=True, help="Same as --residual stream (older name).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect_cmd(model: Path, residual: str, prune_residual: bool, debug: bool) -> None:
    """Show the channel groups of MODEL and what is left unpruned, without pruning."""
    _setup_logging(0, False)
    from .coupling import find_groups
    from .fold import fold_constants
    from .srn import serialise

    residual = "stream" if prune_residual else residual
    try:
        loaded = fold_constants(load_model(model))
        form = SERIALISED_FORMS.get(residual)
        serialised = serialise(loaded, form) if form is not None else None
        if serialised is not None:
            loaded = serialised.model
        view = GraphView.build(loaded, input_shapes=_probe_shapes(loaded))
        coupling = find_groups(view, residual=residual in STREAM_GROUPS)
    except PoemError as e:
        _fail(e, debug)
        return
    if serialised is not None:
        click.echo(f"{len(serialised.blocks)} residual blocks serialised, {len(serialised.left)} left")
        for where, why in serialised.left.items():
            click.echo(f"  {where}: {why}")
    click.echo(f"{len(coupling.groups)} prunable groups")
    for g in coupling.groups:
        cons = ", ".join(f"{c.label} [{c.activation.kind}{'+residual' if c.offset else ''}]" for c in g.consumers)
        kind = f" residual stream of {len(g.producers)} producers," if g.residual else ""
        if not g.residual and len(g.producers) > 1:
            kind = f" {len(g.producers)} producers,"
        size = f"{g.channels} channels" if g.block == 1 else f"{g.channels} conv groups of {g.block} channels"
        if g.heads:
            size = f"{g.channels} attention heads of {g.block} channels (q, k, v: {len(g.producers)} producers)"
            if g.repeat > 1:
                size = (
                    f"{g.channels} key/value heads of {g.block} channels, each shared by {g.repeat} query heads "
                    f"(grouped-query attention; q, k, v: {len(g.producers)} producers)"
                )
            kind = ""
        click.echo(f"  {g.id}:{kind} {size} -> {cons}")
    click.echo(f"{len(coupling.unprunable)} parts left unpruned")
    for u in coupling.unprunable:
        click.echo(f"  {u.where}: {u.reason}")
    unknown = sorted({u.unknown_op for u in coupling.unprunable if u.unknown_op})
    if unknown:
        click.echo(f"  (no op kind takes {', '.join(unknown)}: `onnx-poem ops` lists those that channels pass)")
    click.echo(_hidden_line(view))


@main.command("ops")
def ops_cmd() -> None:
    """List the ONNX ops channels are followed through (the op kinds of onnx_poem/coupling/ops), and what each does
    to them; a group that reaches any other op is left unpruned, with the op named in the report."""
    _setup_logging(0, False)
    from .coupling.flow import KINDS
    from .coupling.ops.activations import ELEMENTWISE

    width = max(len(op) for op in KINDS)
    for op in sorted(KINDS):
        kinds = KINDS[op]
        roles = sorted({r for k in kinds for r in _roles(k)})
        what = "; ".join(f"{k.name}: {k.doc}" for k in kinds)
        act = ELEMENTWISE[op].kind if op in ELEMENTWISE else None
        if act is not None:
            what += f"; after a layer, the activation POEM fits through ({act})"
        click.echo(f"{op:<{width}}  [{', '.join(roles)}]  {what}")


def _roles(kind: Any) -> list[str]:
    """What an op kind answers: flow through it, new channel spaces or joins, a producer, attention heads."""
    return [
        role
        for role, on in (
            ("flow", kind.flow is not None),
            ("spaces", kind.hook is not None or kind.early is not None),
            ("producer", kind.producer is not None),
            ("heads", kind.heads),
        )
        if on
    ]


def _hidden_line(view: GraphView) -> str:
    """Whether ``--hidden`` applies: the stream's size and normalisations, or why not."""
    from .hidden import NotSliceable, find_stream

    stream = find_stream(view)
    if isinstance(stream, NotSliceable):
        return f"hidden size: not sliceable by --hidden ({stream.reason})"
    kind = "LayerNorms" if stream.centred else "RMSNorms"
    return (
        f"hidden size: {stream.size}, sliceable by --hidden ({len(stream.norms)} {kind}, {len(stream.writers)} writers)"
    )


if __name__ == "__main__":
    main()
