"""Build of the compiled core: OpenMP when the compiler has it, a warning when not.

The metadata lives in pyproject.toml; this file only describes the extension and how to
compile it on each platform.

OpenMP per platform (each probed by compiling and linking a small OpenMP program):

- Linux, MinGW (GCC or Clang): ``-fopenmp``. ``auditwheel repair`` bundles libgomp.
- macOS (Apple Clang has no ``-fopenmp`` driver flag): ``-Xpreprocessor -fopenmp`` with
  LLVM's libomp (``-lomp``), found in ``TCONV3D_LIBOMP_PREFIX``, ``brew --prefix libomp``,
  ``/opt/homebrew/opt/libomp``, ``/usr/local/opt/libomp`` or MacPorts' ``/opt/local``;
  include and library paths given in ``CPPFLAGS``/``CFLAGS``/``LDFLAGS`` work too.
  A GCC or LLVM Clang with ``-fopenmp`` is tried last. ``delocate`` bundles libomp.
- Windows (MSVC): ``/openmp`` (OpenMP 2.0, enough for the ``prange`` loops);
  ``delvewheel repair`` bundles ``vcomp140.dll``.

Environment variables
---------------------
TCONV3D_DEBUG=1             bounds checking and assertions on in the Cython code, no
                            optimisation.
TCONV3D_NO_OPENMP=1         build without OpenMP (single-threaded).
TCONV3D_LIBOMP_PREFIX=DIR   macOS: libomp installed under DIR (DIR/include, DIR/lib).

No ``-march=native`` and no ``-ffast-math``: wheels run on any CPU of their architecture
and give the reference's numbers; the GEMM micro-kernels reach AVX2/AVX-512 through
runtime dispatch (``tconv3d/_gemm.h``).
"""
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0")


DEBUG = _flag("TCONV3D_DEBUG")


def _libomp_prefixes():
    """Where libomp may be installed on macOS, most specific first."""
    prefixes = []
    if os.environ.get("TCONV3D_LIBOMP_PREFIX"):
        prefixes.append(os.environ["TCONV3D_LIBOMP_PREFIX"])
    try:
        out = subprocess.run(["brew", "--prefix", "libomp"], capture_output=True,
                             text=True, check=False, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            prefixes.append(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    prefixes += ["/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"]
    found = []
    for p in prefixes:
        if os.path.isfile(os.path.join(p, "include", "omp.h")) and p not in found:
            found.append(p)
    if os.path.isfile("/opt/local/include/libomp/omp.h"):   # MacPorts
        found.append("/opt/local")
    return found


def _openmp_candidates(compiler_type):
    """(compile_args, link_args) to try in turn for this compiler and platform."""
    if compiler_type == "msvc":
        return [(["/openmp"], [])]
    if sys.platform == "darwin":
        cands = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]   # paths from *FLAGS
        for p in _libomp_prefixes():
            sub = "/libomp" if p == "/opt/local" else ""
            cands.append((["-Xpreprocessor", "-fopenmp", f"-I{p}/include{sub}"],
                          [f"-L{p}/lib{sub}", "-lomp"]))
        cands.append((["-fopenmp"], ["-fopenmp"]))
        return cands
    return [(["-fopenmp"], ["-fopenmp"])]


def _links_openmp_program(compiler, compile_args, link_args):
    """Compile and link a tiny OpenMP program, as astropy's extension-helpers do.

    An executable, not a shared object: macOS links extensions with
    ``-undefined dynamic_lookup``, which would hide a missing libomp. ``LDFLAGS`` is
    passed by hand because setuptools gives it to the shared-object linker only.
    """
    src = textwrap.dedent("""
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return (n > 0 && omp_get_max_threads() > 0) ? 0 : 1;
        }
    """)
    ldflags = shlex.split(os.environ.get("LDFLAGS", "")) if compiler.compiler_type != "msvc" else []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check_openmp.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=compile_args)
            compiler.link_executable(objects, os.path.join(tmp, "check_openmp"),
                                     extra_postargs=ldflags + link_args)
        except Exception:
            return False
    return True


def _openmp_flags(compiler):
    """The first candidate that builds an OpenMP program, or None."""
    for compile_args, link_args in _openmp_candidates(compiler.compiler_type):
        if _links_openmp_program(compiler, compile_args, link_args):
            return compile_args, link_args
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        ctype = self.compiler.compiler_type
        flags = None if _flag("TCONV3D_NO_OPENMP") else _openmp_flags(self.compiler)
        if flags is None:
            warnings.warn("tconv3d: no working OpenMP for this compiler (or "
                          "TCONV3D_NO_OPENMP is set); building a single-threaded extension.")
        else:
            print(f"tconv3d: OpenMP with compile args {flags[0]}, link args {flags[1]}")
        if ctype == "msvc":
            opt = ["/Od", "/Zi"] if DEBUG else ["/O2"]
        else:
            # -g0: Python's own CFLAGS carry -g, which would quadruple the wheel.
            opt = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
        for ext in self.extensions:
            ext.extra_compile_args += opt
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
        super().build_extensions()


extensions = [
    Extension(
        "tconv3d._kernels",
        ["tconv3d/_kernels.pyx"],
        include_dirs=[np.get_include(), "tconv3d"],
        depends=["tconv3d/_gemm.h", "tconv3d/_taps.pxi"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": DEBUG,
            "cpow": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
