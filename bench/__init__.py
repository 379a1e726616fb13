"""Benchmarks of the tcpsocket daemon against direct TCP and websockify (``python -m bench``)."""
