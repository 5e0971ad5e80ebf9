"""``qdm-med bench``: how much compute the quadtree saves on real CT, at what quality (issue 7).

:func:`run_bench` loads a CT bundle and its held-out patient, runs the suites of
:mod:`qdm_med.bench.suites` and writes ``benchmarks.md`` (tables), ``benchmarks.json`` (every number and
the machine) and PNG plots into one folder. Quick mode (4 slices, 2 repeats, 16-slice end-to-end volume)
finishes in a few minutes on 2 CPU cores; the full mode uses 16 slices, 3 repeats and the whole volume.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from qdm_med.bench.measure import PeakMemory, machine_info, time_call
from qdm_med.bench.report import check_targets, markdown_report, write_plots

__all__ = ["run_bench", "SUITES", "PeakMemory", "time_call", "machine_info"]

logger = logging.getLogger("qdm_med")

#: suite names in the order they run
SUITES: tuple[str, ...] = ("threshold", "samplers", "scaling", "gather", "end_to_end")
_PLOTS = ("threshold_sweep.png", "samplers.png", "scaling.png")


def _outputs(out: Path) -> list[Path]:
    return [out / "benchmarks.md", out / "benchmarks.json", *(out / p for p in _PLOTS)]


def run_bench(
    bundle=None,
    out: str | Path = "qdm_med_bench",
    quick: bool = False,
    device: str = "cpu",
    data_dir=None,
    seed: int = 0,
    suites: Sequence[str] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    command: str = "qdm-med bench",
    patient: str | None = None,
) -> dict:
    """Run the benchmark suites and write the report files into ``out``; returns the results dict.

    Args:
        bundle: CT bundle folder (default: the shipped x8 CT bundle).
        quick: 4 slices / 2 repeats / 16-slice end-to-end volume instead of 16 / 3 / the whole volume.
        device: "cpu", "cuda", "cuda:i" or "auto".
        data_dir: corpus folder (default: ``$QDM_MED_DATA`` or the user cache dir).
        suites: a subset of :data:`SUITES` (default: all).
        overwrite: replace existing report files in ``out``.
        patient: the corpus patient to measure on (default: the bundle's held-out patient, ``data.holdout``).
    """
    from qdm_med._atomic import atomic_path, check_output_path
    from qdm_med.bench import suites as S
    from qdm_med.errors import ConfigError
    from qdm_med.inference.volume import _progress, resolve_device
    from qdm_med.jobs.resolve import default_bundle_dir
    from qdm_med.reports.json_report import to_jsonable

    chosen = list(SUITES if not suites else suites)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        raise ConfigError(f"bench suites {unknown}: use some of {', '.join(SUITES)}")
    out = Path(out)
    for path in _outputs(out):
        check_output_path(path, overwrite)
    dev = resolve_device(device)
    bundle_dir = Path(bundle) if bundle is not None else default_bundle_dir("volume", 8)
    if not bundle_dir.exists():
        raise ConfigError(f"{bundle_dir}: no such bundle folder")
    torch.manual_seed(int(seed))
    n_slices, repeats = (4, 2) if quick else (16, 3)
    ctx = S.prepare_context(bundle_dir, data_dir, dev, n_slices=n_slices, repeats=repeats, seed=seed, patient=patient)
    results: dict = {
        "command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "quick": bool(quick),
        "seed": int(seed), "bundle": bundle_dir.name, "bundle_path": str(bundle_dir), "patient": ctx.patient,
        "slices": ctx.slices, "scale": ctx.scale, "window": list(ctx.bundle.window), "defaults": dict(ctx.defaults),
        "machine": machine_info(dev), "notes": [],
        "sparsity": "token" if getattr(ctx.pipeline.qdm, "token_sparse", False) else "window",
    }
    jobs = {
        "threshold": lambda: {"threshold_sweep": S.threshold_sweep(ctx, S.sweep_thresholds(ctx.defaults["threshold"]))},
        "samplers": lambda: {"sampler_sweep": S.sampler_sweep(ctx)},
        "scaling": lambda: {"slice_scaling": S.slice_scaling(ctx), "volume_scaling": S.volume_scaling(ctx)},
        "gather": lambda: {"gather_vs_loop": S.gather_vs_loop(ctx)},
        "end_to_end": lambda: {"end_to_end": S.end_to_end(ctx, n_slices=16 if quick else ctx.lr_volume.array.shape[2])},
    }
    bar = _progress(not quiet)
    if bar is not None:
        bar.start()
        task = bar.add_task("bench", total=len(chosen), unit="suites")
    try:
        for name in chosen:
            logger.info("bench: %s", name)
            results.update(jobs[name]())
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    results["targets"] = check_targets(results)
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = [p.name for p in write_plots(results, out, overwrite=overwrite)]
    results = to_jsonable(results)
    with atomic_path(out / "benchmarks.json", overwrite) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_path(out / "benchmarks.md", overwrite) as tmp:
        tmp.write_text(markdown_report(results))
    return results
