"""ds2: a Deep Speech 2 speech recognition toolkit.

Pipeline: ``ds2 prepare`` (manifests) -> ``ds2 train`` -> ``ds2 decode`` -> ``ds2 score``.
"""

__version__ = "0.1.0"
