"""tcpsocket: raw TCP client sockets for web and Python apps over a session WebSocket."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "tcpsocket" / "_version.py").read_text(encoding="utf-8")
)
assert VERSION is not None

setup(
    name="tcpsocket",
    version=VERSION.group(1),
    license="MIT",
    description=__doc__,
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["tcpsocket", "tcpsocket.*"]), "twisted.plugins"],
    package_data={
        "tcpsocket": ["py.typed", "static/*", "static/*/*"],
        "twisted": ["plugins/tcpsocket_plugin.py", "plugins/tcpsocket_endpoints.py"],
    },
    install_requires=[
        # tcpsocket/_private.py reaches into both; tests/test_private_canaries.py
        # checks each use, so the upper bounds are the releases it was checked with.
        "twisted>=24.7,<27",
        "autobahn>=24.4,<27",
        "prometheus_client>=0.17",
        "PyJWT>=2.8",
        "tomli>=2; python_version<'3.11'",
    ],
    extras_require={
        "tls": ["twisted[tls]"],  # also the secure-socket service (tcpsocket/services/securesocket)
        # RS256/ES256 signed tokens (--jwt-public-key-file) and the shared single-use store.
        "jwt-keys": ["PyJWT[crypto]>=2.8"],
        "redis": ["redis>=4.2"],
        "test": [
            "twisted[tls]",
            "pytest",
            "pytest-twisted",
            "pytest-cov",
            "playwright",
            # Checkers pinned: a new release may add checks, and CI must not turn red by itself.
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "ruff==0.17.6",
            "hypothesis",
            "PyJWT[crypto]>=2.8",
            "redis>=4.2",
            "wisp-python==0.9.0",  # tests/test_bench_wisp.py runs the bench's Wisp client on it
        ],
        "bench": ["websockify", "websockets", "wisp-python==0.9.0"],
    },
    classifiers=[
        "Framework :: Twisted",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Programming Language :: JavaScript",
        "Topic :: Internet",
    ],
)
