"""The optional C speedups (``trackmw._speedups``); everything else is in pyproject.toml.

``optional=True``: where the extension cannot be built (no C compiler, no Python
headers), setuptools warns and installs trackmw as pure Python, which does the same.
(pip caches the wheel it built: after installing a compiler, reinstall with
``--no-cache-dir --force-reinstall`` to get the speedups.)
"""

import os
import sysconfig

from setuptools import Extension, setup

# setuptools' working metadata (``*.egg-info``) goes under build/, not into src/ next
# to the package, where it would read as part of the source.
os.makedirs("build", exist_ok=True)

# Not on a free-threaded Python: the module relies on the GIL, and importing it there
# would turn the GIL back on for the whole process.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

setup(
    options={"egg_info": {"egg_base": "build"}},
    ext_modules=[]
    if FREE_THREADED
    else [Extension("trackmw._speedups", ["src/trackmw/_speedups.c"], optional=True)]
)
