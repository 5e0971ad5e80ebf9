"""``qdm-med bench``: the measuring tools against known allocations, the target checks and report on
synthetic results, and the suites on the shipped x8 bundle with real held-out CT (slow, corpus)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qdm_med.bench.measure import PeakMemory, machine_info, time_call, time_calls
from qdm_med.bench.report import check_targets, markdown_report, write_plots
from qdm_med.cli import app
from qdm_med.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
X8 = REPO / "bundles" / "qdm_ct_x8"


# ------------------------------------------------------------------------------------------ measuring
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_sees_a_known_allocation_and_resets_between_blocks():
    def block(mb: int):
        a = torch.ones(mb * 2**20 // 4)  # mb MiB of float32
        b = a + 1  # two live buffers at the peak
        del a, b

    sizes = {}
    for mb in (64, 8, 64):  # the third block must not be hidden by the first one's high-water mark
        with PeakMemory() as mem:
            block(mb)
        sizes.setdefault(mb, []).append(mem.peak_bytes / 2**20)
    assert 0.95 * 2 * 8 <= sizes[8][0] < 2 * 8 + 32  # slack: the interpreter and allocator move a few MB too
    for got in sizes[64]:
        assert 0.95 * 2 * 64 <= got < 2 * 64 + 32


def test_time_call_runs_warmup_and_repeats_and_takes_the_median():
    calls = []
    out = time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and out["repeats"] == 5
    assert 0 <= out["seconds_min"] <= out["seconds"]


def test_time_calls_interleave_rotating_the_start_and_time_each_call():
    import time

    order = []
    a = lambda: order.append("a") or time.sleep(0.002)  # noqa: E731
    b = lambda: order.append("b") or time.sleep(0.02)  # noqa: E731
    ta, tb = time_calls([a, b], repeats=4, warmup=1)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up round, then rotating rounds
    assert ta["repeats"] == tb["repeats"] == 4
    assert 0.002 <= ta["seconds"] < tb["seconds"] and 0.02 <= tb["seconds_min"] <= tb["seconds"]


def test_machine_info_names_the_cpu_and_threads():
    info = machine_info("cpu")
    assert info["cores"] >= 1 and info["torch_threads"] == torch.get_num_threads() and info["device"] == "cpu"
    assert info["cpu"]


# ------------------------------------------------------------------------------------ report, targets
def _synthetic(speedup: float, gather: float, slope: float) -> dict:
    sweep = [{"setting": "full mask (dense)", "threshold": None, "psnr": 30.0, "seconds_per_slice": 1.0}]
    for s, sp, dp in ((0.0, 1.0, 0.0), (0.15, speedup, -0.05), (0.9, 6.0, -0.3)):
        sweep.append({"setting": f"s = {s}", "threshold": s, "speedup_vs_dense": sp, "psnr_minus_full": dp, "psnr": 30 + dp,
                      "seconds_per_slice": 1 / sp, "dense_seconds_per_slice": 1.0, "density": 1 - s, "active_windows": 1 - s / 2})
    return {
        "defaults": {"sampler": "uniform", "steps": 1, "threshold": 0.15},
        "threshold_sweep": sweep,
        "gather_vs_loop": [{"threshold": 0.0, "speedup": 9.0}, {"threshold": 0.15, "speedup": gather}],
        "slice_scaling": [
            {"path": "dense", "pixels": p, "seconds": p / 1e5, "peak_mb": p / 1e4, "peak_mb_exponent": slope} for p in (1e5, 4e5)
        ],
        "volume_scaling": [],
        "sampler_sweep": [
            {"setting": "bicubic", "sampler": "bicubic", "psnr": 29.0, "seconds_per_slice": None},
            {"setting": "uniform-4", "sampler": "uniform", "psnr": 30.1, "seconds_per_slice": 0.4},
        ],
    }


@pytest.mark.parametrize("speedup,gather,slope,met", [(3.2, 2.5, 1.0, True), (1.1, 1.5, 1.6, False)])
def test_check_targets_reads_the_default_threshold_row(speedup, gather, slope, met):
    t = check_targets(_synthetic(speedup, gather, slope))
    assert t["sparse_speedup_at_default"] == speedup and t["gather_speedup"] == gather  # the s = 0.15 rows
    assert t["sparse_speedup_met"] is met and t["gather_speedup_met"] is met and t["memory_linear_met"] is met
    assert t["psnr_within_0.1_of_full"] is True


def test_the_sweep_includes_the_default_threshold():
    from qdm_med.bench.suites import THRESHOLDS, sweep_thresholds

    assert sweep_thresholds(0.15) == THRESHOLDS  # already in the sweep
    assert sweep_thresholds(0.2) == (0.0, 0.05, 0.15, 0.2, 0.3, 0.6, 0.9)
    assert sweep_thresholds(None) == THRESHOLDS


def test_markdown_and_plots_from_results(tmp_path):
    res = _synthetic(3.2, 2.5, 1.0)
    res.update(
        bundle="qdm_ct_x8",
        patient="p",
        date="today",
        command="qdm-med bench",
        quick=True,
        seed=0,
        slices=[1],
        scale=8,
        window=[-1024, 2048],
        machine=machine_info("cpu"),
        targets=check_targets(res),
    )
    paths = write_plots(res, tmp_path)
    assert sorted(p.name for p in paths) == ["samplers.png", "scaling.png", "threshold_sweep.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    with pytest.raises(Exception, match="exists"):
        write_plots(res, tmp_path)  # no silent overwrite
    md = markdown_report(res)
    assert "**3.20x** faster (target 3x: met)" in md and "## 1. Mask threshold sweep" in md and "| s = 0.15 |" in md


# ---------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def ctx(corpus_dir):
    from qdm_med.bench.suites import prepare_context

    return prepare_context(X8, corpus_dir, "cpu", n_slices=2, repeats=3, seed=0)


@pytest.mark.slow
@pytest.mark.corpus
def test_threshold_sweep_on_real_ct(ctx):
    from qdm_med.bench.suites import threshold_sweep

    rows = threshold_sweep(ctx, thresholds=(0.0, 0.9))
    full, s0, s9 = rows
    assert full["path"] == "dense" and s0["density"] == 1.0 and s0["active_windows"] == 1.0
    assert s0["psnr"] == pytest.approx(full["psnr"], abs=1e-3)  # sparse path on the full mask == dense path
    assert s0["gmacs_per_slice"] == full["gmacs_per_slice"] and s9["gmacs_per_slice"] < s0["gmacs_per_slice"]
    assert s9["density"] < 0.05 and s9["active_windows"] < 0.2
    # few windows: the sparse path skips most of the downstream (fastest of 3 runs: robust to a busy machine)
    assert s9["dense_seconds_per_slice_min"] > 1.5 * s9["seconds_per_slice_min"]
    assert ctx.pipeline.threshold == ctx.defaults["threshold"] and ctx.pipeline.sparse  # restored


@pytest.mark.slow
@pytest.mark.corpus
def test_gather_equals_loop_on_real_ct(ctx):
    from qdm_med.bench.suites import gather_vs_loop

    (row,) = gather_vs_loop(ctx, thresholds=[0.15])
    assert row["max_abs_diff"] < 1e-4 and 0 < row["active_windows"] <= row["total_windows"]
    assert row["speedup"] > 1.0


@pytest.mark.slow
@pytest.mark.corpus
def test_bench_cli_quick_writes_tables_json_and_plots(tmp_path, corpus_dir):
    data = corpus_dir
    out = tmp_path / "bench"
    r = CliRunner().invoke(
        app, ["bench", "--quick", "--suites", "end_to_end", "--bundle", str(X8), "--data", str(data), "--out", str(out), "-q"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "benchmarks.json").read_text())
    assert res["patient"] == "pyradiomics_lung2" and res["quick"] and res["machine"]["cores"] >= 1
    (e2e,) = res["end_to_end"]
    assert e2e["input_shape"] == [64, 64, 16] and e2e["output_shape"] == [512, 512, 16]
    parts = sum(e2e[k] for k in ("load", "encode", "sampling", "decode", "slicewise_other", "write"))
    assert 0.5 * e2e["total"] < parts <= e2e["total"] * 1.01
    md = (out / "benchmarks.md").read_text()
    assert "## 5. End to end" in md and "## 1." not in md


@pytest.mark.slow
@pytest.mark.corpus
def test_bench_refuses_a_natural_image_bundle(tmp_path, corpus_dir):
    r = CliRunner().invoke(
        app, ["bench", "--bundle", str(REPO / "bundles" / "qdm_natural_x4"), "--data", str(corpus_dir), "--out", str(tmp_path / "b"), "-q"]
    )
    assert r.exit_code == 2 and "CT bundles" in r.output


@pytest.mark.slow
@pytest.mark.corpus
def test_context_on_a_named_patient_and_the_tuning_script_refuses_the_held_out_one(corpus_dir):
    import subprocess
    import sys

    from qdm_med.bench.suites import prepare_context

    ctx = prepare_context(X8, corpus_dir, "cpu", n_slices=1, patient="pyradiomics_lung1")
    assert ctx.patient == "pyradiomics_lung1" and ctx.hr_hu.shape[0] == 1
    with pytest.raises(ConfigError, match="not in the corpus"):
        prepare_context(X8, corpus_dir, "cpu", n_slices=1, patient="nobody")
    script = REPO / "scripts" / "tune_tss.py"
    res = subprocess.run(
        [sys.executable, str(script), str(X8), "--patient", "pyradiomics_lung2", "--slices", "1", "--out", "unused"],
        capture_output=True,
        text=True,
        env={**os.environ, "QDM_MED_DATA": str(corpus_dir)},
    )
    assert res.returncode != 0 and "held-out patient" in res.stderr
