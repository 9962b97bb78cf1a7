"""Builds the optional C++ extension ``trim_fast._C`` (pybind11, C++17, OpenMP when available).

Everything else lives in pyproject.toml. If the compiler fails, the package still installs and
the CPU kernels fall back to PyTorch (``trim_fast._ext.HAS_C`` says which one is in use).
"""
import glob
import os
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 comes from build-system.requires; without it, no extension
    Pybind11Extension = None


def _compiler_accepts(flag: str) -> bool:
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        cmd = [cxx, flag, src, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


class OptionalBuildExt(build_ext):
    """A failed native build must not fail the install: the torch fallback covers it."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: trim_fast._C was not built ({exc}); using the PyTorch CPU fallback",
                  file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: trim_fast._C was not built ({exc}); using the PyTorch CPU fallback",
                  file=sys.stderr)


ext_modules = []
if Pybind11Extension is not None and os.environ.get("TRIM_FAST_NO_EXT") != "1":
    compile_args = ["-O3"]
    link_args = []
    if sys.platform != "win32" and _compiler_accepts("-fopenmp"):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    if os.environ.get("TRIM_FAST_NATIVE") == "1":
        compile_args.append("-march=native")
    ext_modules.append(
        Pybind11Extension(
            "trim_fast._C",
            sorted(glob.glob("csrc/*.cpp")),
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
