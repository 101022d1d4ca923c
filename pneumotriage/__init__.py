"""pneumotriage: the command line and the service that compose the node, the worker, the
outputs, the forwarder, the reports, the web application and the training code."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pneumotriage")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
