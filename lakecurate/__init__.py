"""lakecurate: curate image-text training data on a Lance data lake.

Example::

    from lakecurate import Lake
    lake = Lake.create("./lake")
    lake.ingest("sample_data/")
    lake.sql("SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status")
"""

import os
from importlib.metadata import PackageNotFoundError, version

# Lance logs a warning on every DataReplacement commit ("not stable yet"): that operation is how
# lakecurate writes columns (see columns.py), so the warning says nothing to a user. Errors still show;
# set LANCE_LOG=warn (before importing lakecurate) to see warnings again.
os.environ.setdefault("LANCE_LOG", "error")

from lakecurate.features import feature
from lakecurate.lake import Lake, LakeError

try:
    __version__ = version("lakecurate")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+local"

__all__ = ["Lake", "LakeError", "__version__", "feature"]
