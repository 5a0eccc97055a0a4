"""liandan: a training suite for the AUTOMATIC1111 WebUI that also runs on its own.

Importing the package does no work: every submodule loads what it needs when it is used.
"""

__version__ = "0.1.0"
