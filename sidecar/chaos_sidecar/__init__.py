"""Chaos training sidecar: membership, monitoring, shard planning and state transfer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("chaos-training")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
