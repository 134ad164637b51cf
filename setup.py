"""The optional C speedups (``trackmw._speedups``); everything else is in pyproject.toml.

``optional=True``: where the extension cannot be built (no C compiler, no Python
headers), setuptools warns and installs trackmw as pure Python, which does the same.
(pip caches the wheel it built: after installing a compiler, reinstall with
``--no-cache-dir --force-reinstall`` to get the speedups.)

The extension signs new visitors' cookies through OpenSSL's libcrypto (usually the
library Python's ``hashlib`` uses) when its headers are installed (Debian:
``libssl-dev``); without them it is built without, and signs through ``hashlib``'s
hash objects: the same tokens, the HMAC at about three times the cost.
"""

import os
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError

# setuptools' working metadata (``*.egg-info``) goes under build/, not into src/ next
# to the package, where it would read as part of the source.
os.makedirs("build", exist_ok=True)

# Not on a free-threaded Python: the module relies on the GIL, and importing it there
# would turn the GIL back on for the whole process.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

OPENSSL_MACRO, OPENSSL_LIBRARY = ("TRACKMW_OPENSSL", "1"), "crypto"


class BuildExt(build_ext):
    """Builds ``_speedups`` with OpenSSL's libcrypto, and without it if that fails."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CompileError, LinkError) as exc:
            if OPENSSL_LIBRARY not in ext.libraries:  # the build without it failed too
                raise
            print(f"trackmw: building the speedups without OpenSSL ({exc})")
            ext.define_macros.remove(OPENSSL_MACRO)
            ext.libraries.remove(OPENSSL_LIBRARY)
            super().build_extension(ext)


setup(
    options={"egg_info": {"egg_base": "build"}},
    cmdclass={"build_ext": BuildExt},
    ext_modules=[]
    if FREE_THREADED
    else [
        Extension("trackmw._speedups", ["src/trackmw/_speedups.c"], optional=True,
                  define_macros=[OPENSSL_MACRO], libraries=[OPENSSL_LIBRARY])
    ],
)
