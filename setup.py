"""The optional C speedups (``trackmw._speedups``); everything else is in pyproject.toml.

``optional=True``: where the extension cannot be built (no C compiler, no Python
headers), setuptools warns and installs trackmw as pure Python, which does the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("trackmw._speedups", ["src/trackmw/_speedups.c"], optional=True),
    ]
)
