"""The installed version of lakecurate (recorded in every column's provenance)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lakecurate")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+local"
