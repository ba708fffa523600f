"""storydiff: children's stories from a masked diffusion language model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("storydiff")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
