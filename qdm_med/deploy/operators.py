"""The qdm-med operators of the MONAI Deploy application (they subclass the SDK: import this module only
where ``monai-deploy-app-sdk`` is installed).

- :class:`CTSeriesSelectorOperator`: the SDK's rule-based series selector with this application's default
  rule (CT, axial, the series with the most instances first) and a one-line error when nothing matches.
- :class:`QDMBundleSROperator`: a qdm-med bundle folder's ``network_def`` with ``models/model.pt`` loaded
  strictly (:func:`qdm_med.inference.bundle.load_bundle`), run by the project's slice-wise inferencer
  exactly as ``qdm-med upscale`` runs it (same tiling, batch size, out-of-window merge and per-batch seed).
- :class:`DerivedSeriesWriterOperator`: the derived DICOM series, written with the project's writer
  (:func:`qdm_med.io.write_dicom_series`) into ``OUTPUT/<folder>`` through a temporary folder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from qdm_med.deploy.series import volume_from_series
from qdm_med.errors import InputError

__all__ = ["DEFAULT_RULES", "CTSeriesSelectorOperator", "QDMBundleSROperator", "DerivedSeriesWriterOperator"]

logger = logging.getLogger("qdm_med")

#: Default selection: axial CT series (the selector sorts the matches by instance count, largest first).
DEFAULT_RULES = json.dumps(
    {"selections": [{"name": "CT axial", "conditions": {"Modality": "(?i)^CT$", "ImageOrientationPatient": "Axial"}}]}
)


class CTSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """Select the series to upscale: the SDK selector with ``all_matched`` and sorting by instance count, so
    the first selected series -- the one ``DICOMSeriesToVolumeOperator`` converts -- is the largest match of
    the first study that has one.

    Named input ``dicom_study_list``; named output ``study_selected_series_list``. ``rules``: the SDK's JSON
    selection rules (default :data:`DEFAULT_RULES`). Raises InputError when no series matches.
    """

    def __init__(self, fragment: Fragment, *args, rules: str | None = None, source: str = "input", **kwargs) -> None:
        self.source = source
        super().__init__(fragment, *args, rules=rules or DEFAULT_RULES, all_matched=True, sort_by_sop_instance_count=True, **kwargs)

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        try:
            selected = super().filter(selection_rules, dicom_study_list, all_matched, sort_by_sop_instance_count)
        except NotImplementedError as err:  # the SDK's orientation rule needs PatientPosition
            raise InputError(f"{self.source}: the selection rules cannot be applied ({err})") from None
        if not selected:
            found = [
                f"{s.Modality or '?'} series {s.SeriesNumber if s.SeriesNumber is not None else '?'} "
                f"({len(s.get_sop_instances())} instances)"
                for study in dicom_study_list or [] for s in study.get_all_series()
            ]
            raise InputError(
                f"{self.source}: no DICOM series matches the selection rules (default: axial CT); found "
                + (", ".join(found) or "no series")
            )
        return selected


class QDMBundleSROperator(Operator):
    """Super-resolve the selected CT series with a qdm-med bundle folder.

    Named inputs: ``image`` (the SDK ``Image`` of ``DICOMSeriesToVolumeOperator``, (D, H, W) HU) and
    ``study_selected_series_list`` (its sorted SOP instances give the geometry and the headers).
    Named output: ``sr_volume``, a :class:`qdm_med.io.Volume` (X*s, Y*s, Z) HU with the source headers.

    Args:
        fragment: the application.
        bundle_dir: a QDM bundle folder (``configs/inference.json``, ``models/model.pt``).
        seed, batch_size, tile_size, device: as ``qdm-med upscale`` (defaults equal its defaults).
        check_output: called with the source SeriesInstanceUID before the (slow) inference, e.g. to refuse
            an existing output folder at once.
    """

    def __init__(self, fragment: Fragment, *args, bundle_dir: str | Path, seed: int = 0, batch_size: int = 4,
                 tile_size: int | None = 128, device: str = "auto", check_output=None, **kwargs) -> None:
        from qdm_med.bundle import load_bundle
        from qdm_med.inference.volume import resolve_device

        self.device = resolve_device(device)
        self.bundle = load_bundle(bundle_dir, self.device)  # ConfigError: not a QDM bundle, no/misfitting weights
        n_params = sum(p.numel() for p in self.bundle.pipeline.parameters())
        logger.info("loaded bundle folder %s: network_def of configs/inference.json, models/model.pt loaded strictly "
                    "(%d parameters), x%d, %s", bundle_dir, n_params, self.bundle.scale, type(self.bundle.pipeline).__name__)
        self.seed, self.batch_size, self.tile_size = int(seed), int(batch_size), tile_size
        self.check_output = check_output
        self.stats: dict = {}
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.output("sr_volume").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        import torch

        from qdm_med.inference.volume import SliceWiseInferencer

        image = op_input.receive("image")
        selected = op_input.receive("study_selected_series_list")
        series = selected[0].selected_series[0].series
        datasets = [inst.get_native_sop_instance() for inst in series.get_sop_instances()]
        label = f"series {series.SeriesInstanceUID}"
        if self.check_output is not None:
            self.check_output(str(series.SeriesInstanceUID))
        volume = volume_from_series(np.asarray(image.asnumpy()), datasets, label)
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)  # as qdm-med upscale; the inferencer re-seeds per batch
        inferencer = SliceWiseInferencer(
            self.bundle.pipeline, self.bundle.scale, window=self.bundle.window, batch_size=self.batch_size,
            tile_size=self.tile_size, device=self.device, progress=False, seed=self.seed,
        )
        sr, stats = inferencer.infer(volume)
        self.stats = {"seconds": time.perf_counter() - t0, "slices": volume.array.shape[2], **stats}
        logger.info("%s: x%d super-resolution of %d slices %s in %.1f s", label, self.bundle.scale,
                    volume.array.shape[2], "x".join(map(str, volume.array.shape[:2])), self.stats["seconds"])
        op_output.emit(sr, "sr_volume")


class DerivedSeriesWriterOperator(Operator):
    """Write the SR volume as a derived DICOM series (new series, DERIVED\\SECONDARY\\AXIAL, SourceImageSequence
    per slice) into ``output_folder/<series folder>``, one file per slice, through a temporary folder.

    Named input ``sr_volume``. The series folder is ``SR_x{s}_<source SeriesInstanceUID>``; an existing one is
    refused unless ``overwrite``. ``written`` holds the last folder written.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: str | Path, scale: int, overwrite: bool = False, **kwargs) -> None:
        self.output_folder, self.scale, self.overwrite = Path(output_folder), int(scale), bool(overwrite)
        self.written: Path | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("sr_volume")

    def series_folder(self, source_series_uid: str) -> Path:
        """The folder the derived series of ``source_series_uid`` goes to."""
        return self.output_folder / f"SR_x{self.scale}_{source_series_uid}"

    def check(self, source_series_uid: str) -> None:
        """OutputError now if that folder exists (without ``overwrite``) or cannot be created."""
        from qdm_med._atomic import check_output_path

        check_output_path(self.series_folder(source_series_uid), self.overwrite)

    def compute(self, op_input, op_output, context) -> None:
        from qdm_med.io import write_dicom_series

        sr = op_input.receive("sr_volume")
        out = self.series_folder(str(sr.meta.get("series_uid", "series")))
        self.output_folder.mkdir(parents=True, exist_ok=True)
        write_dicom_series(sr, out, self.scale, sr.dicom_headers, overwrite=self.overwrite, description_suffix=f" SR x{self.scale}")
        self.written = out
        logger.info("wrote %d slices to %s", sr.array.shape[2], out)
