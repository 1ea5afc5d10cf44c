"""lakecurate: curate image-text training data on a Lance data lake.

Example::

    from lakecurate import Lake
    lake = Lake.create("./lake")
    lake.ingest("sample_data/")
    lake.sql("SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status")
"""

import os

# Lance logs a warning on every DataReplacement commit ("not stable yet"): that operation is how
# lakecurate writes columns (see columns.py), so the warning says nothing to a user. Errors still show;
# set LANCE_LOG=warn (before importing lakecurate) to see warnings again.
os.environ.setdefault("LANCE_LOG", "error")

from lakecurate._version import __version__
from lakecurate.errors import LakeError
from lakecurate.features import feature
from lakecurate.lake import Lake

__all__ = ["Lake", "LakeError", "__version__", "feature"]
