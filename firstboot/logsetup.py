"""Where the device programs log: the journal (stderr) and one file, every record redacted of token shapes."""

import logging
import sys

from . import protocol


def log_to(file_handler, level=logging.INFO):
    """Send the "pi-image" loggers to stderr and `file_handler`, formatted alike, tokens redacted on the way."""
    formatter = logging.Formatter("%(asctime)s %(name)s: %(message)s")
    handlers = [logging.StreamHandler(sys.stderr), file_handler]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(protocol.redact_record)
    root = logging.getLogger("pi-image")
    for handler in root.handlers:
        handler.close()
    root.handlers = handlers
    root.setLevel(level)
    root.propagate = False
