"""qdm-med as a MONAI Deploy App SDK application (``pip install "qdm-med[deploy]"``).

``python -m qdm_med.deploy -i DICOM_DIR -o OUT_DIR -m BUNDLE_DIR`` reads a DICOM study, selects the CT series
to upscale, super-resolves it in-plane with a qdm-med bundle folder and writes the derived DICOM series
(:mod:`qdm_med.deploy.app`; operators in :mod:`qdm_med.deploy.operators`, the SDK-to-Volume adapter in
:mod:`qdm_med.deploy.series`). Jobs layer: nothing in qdm_med imports this package, and the SDK is imported
only by ``app`` and ``operators``, so ``import qdm_med`` never needs it.
"""
