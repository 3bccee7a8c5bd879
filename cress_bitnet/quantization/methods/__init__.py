"""One file per quantization method: its config, training layer and packed inference layer, registered on import.

To add a method, write ``methods/<name>.py`` (see README "Adding a quantizer") and import it here.
"""

from . import bcq, bitnet, minmax, svcd, tsvd  # noqa: F401  (registration side effects)
