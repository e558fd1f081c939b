"""Builds the C++ extension `megatron_zh._helpers`; package metadata lives in pyproject.toml."""

import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.errors import CompileError, PlatformError

COMPILER_HELP = (
    "megatron_zh needs a C++17 compiler to build its index helper (csrc/helpers.cpp).\n"
    "  Debian/Ubuntu: sudo apt-get install g++\n"
    "  RHEL/Fedora:   sudo dnf install gcc-c++\n"
    "  conda:         conda install -c conda-forge cxx-compiler\n"
    "then run `pip install -e .` again."
)


class BuildExtWithClearErrors(build_ext):
    """Turns a missing or broken compiler into one readable message instead of a distutils traceback."""

    def run(self):
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")) and sys.platform != "win32":
            raise SystemExit("error: no C++ compiler found on PATH.\n" + COMPILER_HELP)
        try:
            super().run()
        except (CompileError, PlatformError) as exc:
            raise SystemExit(f"error: compiling megatron_zh._helpers failed: {exc}\n" + COMPILER_HELP) from exc


setup(
    ext_modules=[
        Pybind11Extension(
            "megatron_zh._helpers",
            ["csrc/helpers.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ],
    cmdclass={"build_ext": BuildExtWithClearErrors},
)
