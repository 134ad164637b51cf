"""The optional C speedups (``trackmw._speedups``); everything else is in pyproject.toml.

``optional=True``: where the extension cannot be built (no C compiler, no Python
headers), setuptools warns and installs trackmw as pure Python, which does the same.
(pip caches the wheel it built: after installing a compiler, reinstall with
``--no-cache-dir --force-reinstall`` to get the speedups.)
"""

import sysconfig

from setuptools import Extension, setup

# Not on a free-threaded Python: the module relies on the GIL, and importing it there
# would turn the GIL back on for the whole process.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

setup(
    ext_modules=[]
    if FREE_THREADED
    else [Extension("trackmw._speedups", ["src/trackmw/_speedups.c"], optional=True)]
)
