"""tcpsocket: raw TCP client sockets for web and Python apps over a session WebSocket."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="tcpsocket",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tcpsocket", "tcpsocket.*"]) + ["twisted.plugins"],
    package_data={
        "tcpsocket": ["py.typed", "static/*", "static/*/*"],
        "twisted": ["plugins/tcpsocket_plugin.py"],
    },
    install_requires=["twisted>=24.7", "autobahn>=24.4"],
    extras_require={
        "tls": ["twisted[tls]"],
        "test": [
            "twisted[tls]",
            "pytest",
            "pytest-twisted",
            "pytest-cov",
            "playwright",
            "mypy",
            "mypy-zope",
            "ruff",
            "wisp-python==0.9.0",  # tests/test_bench_wisp.py runs the bench's Wisp client on it
        ],
        "bench": ["websockify", "websockets", "wisp-python==0.9.0"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: JavaScript",
        "Topic :: Internet",
    ],
)
