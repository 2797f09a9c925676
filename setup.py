# Metadata lives in pyproject.toml; this file only wires in the cffi
# module and the cache's C core, and ships the bench's C reference
# client inside the package.
import os

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

C_CLIENT = os.path.join("csrc", "c_reference_client.c")


class BuildPy(build_py):
    """Copy csrc/c_reference_client.c into the built package, where
    ``tlsresume bench`` finds it once installed."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "tlsresume")
        self.mkpath(target)  # absent in an editable build
        self.copy_file(C_CLIENT, os.path.join(target,
                                              os.path.basename(C_CLIENT)))


setup(cffi_modules=["csrc/build.py:ffibuilder"],
      ext_modules=[Extension("tlsresume._cachecore",
                             [os.path.join("csrc", "cachecore.c")])],
      cmdclass={"build_py": BuildPy})
