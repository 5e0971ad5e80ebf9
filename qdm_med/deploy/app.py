"""The MONAI Deploy application: a DICOM CT series in, its derived super-resolved DICOM series out.

Operators (Holoscan graph, one pass)::

    DICOMDataLoaderOperator --dicom_study_list--> CTSeriesSelectorOperator --study_selected_series_list--+
        +--> DICOMSeriesToVolumeOperator --image--> QDMBundleSROperator --sr_volume--> DerivedSeriesWriterOperator
        +-------------------------------------------------^ (headers and geometry of the sorted instances)

The first three are the SDK's; the bundle operator loads the bundle *folder* (``-m BUNDLE_DIR``) through
the project's bundle layer, because the network does not script to TorchScript (see the bundle's model
card). Paths come from ``-i/-o/-m`` or, as for any MONAI Deploy application, from ``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH`` (SDK defaults ``input``, ``output``, ``models``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, RuntimeEnv
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from qdm_med.deploy.operators import CTSeriesSelectorOperator, DerivedSeriesWriterOperator, QDMBundleSROperator
from qdm_med.errors import ConfigError, InputError, OutputError, QDMError

__all__ = ["QDMSuperResolutionApp", "DeployOptions", "resolve_bundle_dir", "parse_options", "main"]

logger = logging.getLogger("qdm_med")


class DeployOptions(argparse.Namespace):
    """Resolved options: ``input``, ``output``, ``model`` (Paths), ``rules`` (JSON text or None), ``seed``,
    ``batch_size``, ``device``, ``overwrite``, ``log_level``."""


def _rules_text(value: str | None) -> str | None:
    """Selection rules given as JSON text or as the path of a JSON file (validated)."""
    if not value:
        return None
    text = Path(value).read_text() if not value.lstrip().startswith("{") and Path(value).is_file() else value
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--rules: not JSON and not a JSON file ({err.msg} at line {err.lineno})") from None
    if not isinstance(rules, dict) or not isinstance(rules.get("selections"), list) or not rules["selections"]:
        raise ConfigError('--rules: expected {"selections": [{"name": ..., "conditions": {...}}, ...]}')
    return text


def resolve_bundle_dir(path: Path) -> Path:
    """``path`` itself when it is a bundle folder (``configs/inference.json``), else its only bundle subfolder
    (a MAP's ``HOLOSCAN_MODEL_PATH``, ``/opt/holoscan/models``, holds one folder per packaged model)."""
    if not path.is_dir():
        raise ConfigError(f"{path}: no such bundle folder (pass -m BUNDLE_DIR or set HOLOSCAN_MODEL_PATH)")
    if (path / "configs" / "inference.json").is_file():
        return path
    found = [p for p in sorted(path.iterdir()) if (p / "configs" / "inference.json").is_file()]
    if len(found) == 1:
        return found[0]
    what = f"it holds {len(found)} bundles ({', '.join(p.name for p in found)}); pass one" if found else "no configs/inference.json"
    raise ConfigError(f"{path}: not a qdm-med bundle folder ({what})")


def parse_options(argv: list[str] | None = None) -> DeployOptions:
    """Parse ``argv`` (without the program name); paths default to the HOLOSCAN_* variables, then to the
    SDK defaults. Raises InputError/ConfigError (one line) for a missing input or bundle folder."""
    env = RuntimeEnv()
    p = argparse.ArgumentParser(prog="python -m qdm_med.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", default=env.input, help="DICOM folder (searched recursively) [HOLOSCAN_INPUT_PATH]")
    p.add_argument("-o", "--output", default=env.output, help="output folder [HOLOSCAN_OUTPUT_PATH]")
    p.add_argument("-m", "--model", default=env.model,
                   help="qdm-med bundle folder (e.g. bundles/qdm_ct_x4) or a folder holding one [HOLOSCAN_MODEL_PATH]")
    p.add_argument("-l", "--log-level", type=str.upper, default="WARN", choices=["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"])
    p.add_argument("--rules", default=os.environ.get("QDM_DEPLOY_RULES"),
                   help="series selection rules of the SDK selector: JSON text or file [QDM_DEPLOY_RULES]; "
                        "default axial CT, largest series")
    p.add_argument("--seed", type=int, default=0, help="noise seed (as qdm-med upscale --seed)")
    p.add_argument("--batch-size", type=int, default=4, help="slices per model call (as qdm-med upscale)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output series folder")
    opts = p.parse_args(argv, namespace=DeployOptions())
    opts.input, opts.output, opts.model = Path(opts.input), Path(opts.output), Path(opts.model)
    if not opts.input.is_dir():
        raise InputError(f"{opts.input}: no such input folder (pass -i DICOM_DIR or set HOLOSCAN_INPUT_PATH)")
    opts.model = resolve_bundle_dir(opts.model)
    if opts.output.exists() and not opts.output.is_dir():
        raise OutputError(f"{opts.output}: is a file, not an output folder")
    if opts.batch_size < 1:
        raise ConfigError(f"batch size {opts.batch_size}: must be >= 1")
    opts.rules = _rules_text(opts.rules)
    return opts


class QDMSuperResolutionApp(Application):
    """MONAI Deploy application of a qdm-med CT bundle (see module docstring).

    Args:
        options: :class:`DeployOptions` from :func:`parse_options`.
    After ``run()``, ``sr_op.stats`` holds the inference statistics and ``writer.written`` the output series folder.
    """

    def __init__(self, options: DeployOptions, *args, **kwargs) -> None:
        super().__init__([sys.executable, "qdm_med.deploy"], *args, **kwargs)  # not our flags: Holoscan parses argv
        self.deploy_options = options
        self.sr_op: QDMBundleSROperator | None = None
        self.writer: DerivedSeriesWriterOperator | None = None

    def compose(self) -> None:
        o = self.deploy_options
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=o.input, name="dicom_loader")
        selector = CTSeriesSelectorOperator(self, rules=o.rules, source=str(o.input), name="series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        self.sr_op = QDMBundleSROperator(self, bundle_dir=o.model, seed=o.seed, batch_size=o.batch_size, device=o.device,
                                         check_output=lambda uid: self.writer.check(uid), name="qdm_bundle_sr")
        self.writer = DerivedSeriesWriterOperator(self, output_folder=o.output, scale=self.sr_op.bundle.scale,
                                                  overwrite=o.overwrite, name="derived_series_writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, self.sr_op, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, self.sr_op, {("image", "image")})
        self.add_flow(self.sr_op, self.writer, {("sr_volume", "sr_volume")})


def main(argv: list[str] | None = None) -> int:
    """``python -m qdm_med.deploy``: 0 on success, 2 with a one-line ``error: ...`` on bad input."""
    from monai.deploy.exceptions import ItemNotExistsError

    try:
        opts = parse_options(sys.argv[1:] if argv is None else argv)
        # Holoscan's own log (graph, scheduler, its copy of operator exceptions) only with -l INFO/DEBUG or
        # HOLOSCAN_LOG_LEVEL: exceptions still reach app.run(), so bad input ends in the one-line error below.
        os.environ.setdefault("HOLOSCAN_LOG_LEVEL", {"WARN": "CRITICAL"}.get(opts.log_level, opts.log_level))
        logging.basicConfig(level=getattr(logging, opts.log_level), format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("qdm_med").setLevel(getattr(logging, opts.log_level))
        app = QDMSuperResolutionApp(opts)
        app.run()
    except QDMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ItemNotExistsError:  # raised by the SDK's DICOMDataLoaderOperator
        print(f"error: {opts.input}: no DICOM study the SDK loader accepts (no DICOM files, or none with StudyInstanceUID and "
              "SOPInstanceUID)", file=sys.stderr)
        return 2
    if app.writer is None or app.writer.written is None:
        print("error: the application finished without writing a series (see the log above)", file=sys.stderr)
        return 1
    print(app.writer.written)
    return 0
