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

from typing import Any

from lakecurate._version import __version__
from lakecurate.errors import LakeError, LakeWarning

__all__ = ["Lake", "LakeError", "LakeWarning", "__version__", "feature"]


def __getattr__(name: str) -> Any:
    """``Lake`` and ``feature``, imported when first asked for: the ``lakecurate`` program
    (:mod:`lakecurate.program`) takes SIGTERM before Lance, pyarrow and pandas load (a second)."""
    if name == "Lake":
        from lakecurate.lake import Lake

        return Lake
    if name == "feature":
        from lakecurate.features import feature

        return feature
    raise AttributeError(f"module 'lakecurate' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The names loaded on first use too (``dir(lakecurate)``, tab completion)."""
    return sorted(set(globals()) | set(__all__))
