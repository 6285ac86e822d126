"""Build of the compiled core: OpenMP when the compiler has it, a warning when not.

Environment variables
---------------------
TCONV3D_DEBUG=1        bounds checking and assertions on in the Cython code.
TCONV3D_NO_OPENMP=1    build without OpenMP (single-threaded).
"""
import os
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("TCONV3D_DEBUG", "0") not in ("", "0")


def _compiler_has_openmp(compiler, flag):
    """Compile and link a tiny OpenMP program with `flag`, as astropy's helpers do."""
    src = textwrap.dedent("""
        #include <omp.h>
        int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "check_openmp.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objects, os.path.join(tmp, "check_openmp"),
                                     extra_postargs=[flag])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        ctype = self.compiler.compiler_type
        flag = "/openmp" if ctype == "msvc" else "-fopenmp"
        use_openmp = (os.environ.get("TCONV3D_NO_OPENMP", "0") in ("", "0")
                      and _compiler_has_openmp(self.compiler, flag))
        if not use_openmp:
            warnings.warn("tconv3d: the compiler has no OpenMP support; building a "
                          "single-threaded extension.")
        for ext in self.extensions:
            if use_openmp:
                ext.extra_compile_args.append(flag)
                if ctype != "msvc":
                    ext.extra_link_args.append(flag)
            if ctype != "msvc":
                ext.extra_compile_args += ["-O3"] if not DEBUG else ["-O0", "-g"]
        super().build_extensions()


extensions = [
    Extension(
        "tconv3d._kernels",
        ["tconv3d/_kernels.pyx"],
        include_dirs=[np.get_include(), "tconv3d"],
        depends=["tconv3d/_gemm.h"],
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
