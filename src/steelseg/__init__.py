"""steelseg: find and classify defects on rolled-steel surfaces."""

from steelseg.errors import ConfigError, DataError, RLEError, SteelsegError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "RLEError", "SteelsegError", "__version__"]
