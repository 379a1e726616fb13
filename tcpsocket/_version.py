"""The one place the version is written (``setup.py`` and ``tcpsocket.__version__`` read it)."""

__version__ = "0.2.0"
