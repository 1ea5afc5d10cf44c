"""lakecurate: curate image-text training data on a Lance data lake.

Example::

    from lakecurate import Lake
    lake = Lake.create("./lake")
    lake.ingest("sample_data/")
    lake.sql("SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY ingest_status")
"""

from importlib.metadata import PackageNotFoundError, version

from lakecurate.lake import Lake, LakeError

try:
    __version__ = version("lakecurate")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+local"

__all__ = ["Lake", "LakeError", "__version__"]
