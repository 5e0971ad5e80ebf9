"""``python -m qdm_med.deploy -i DICOM_DIR -o OUT_DIR -m BUNDLE_DIR`` (see :mod:`qdm_med.deploy.app`)."""

import sys

from qdm_med.deploy.app import main

if __name__ == "__main__":
    sys.exit(main())
