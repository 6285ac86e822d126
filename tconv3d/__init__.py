"""tconv3d: fast CPU 3D transposed convolution for Python.

Forward and backward passes in an OpenMP-parallel Cython core, with Keras'
``Conv3DTranspose`` numbers for every argument.
"""
from . import activations, constraints, initializers, layers, optimizers, regularizers
from ._ops import conv_transpose3d, conv_transpose3d_backward, conv_transpose3d_output_shape
from ._version import __version__
from .layers import Conv3DTranspose, kernel_from_torch, kernel_to_torch, layer_conv_3d_transpose

__all__ = [
    "__version__",
    "Conv3DTranspose",
    "VolumeUpsampler",
    "conv_transpose3d",
    "conv_transpose3d_backward",
    "conv_transpose3d_output_shape",
    "kernel_from_torch",
    "kernel_to_torch",
    "layer_conv_3d_transpose",
    "show_config",
    "activations",
    "constraints",
    "initializers",
    "layers",
    "optimizers",
    "regularizers",
]


def __getattr__(name):
    # scikit-learn is imported on first use of the upsampler, not with the package.
    if name == "VolumeUpsampler":
        from .upsampling import VolumeUpsampler
        return VolumeUpsampler
    raise AttributeError(f"module 'tconv3d' has no attribute {name!r}")


_BF16_PATHS = {
    "avx512_bf16": "avx512_bf16 (forward and gradient GEMMs on bfloat16 pairs, float32 "
                   "sums; channel-wise problems on widened operands)",
    "float32": "float32 (float32 kernels on exactly widened operands)",
}


def show_config(file=None):
    """Print the version, the OpenMP status, the default thread count and the kernels.

    Parameters
    ----------
    file : file-like, optional
        Where to print; ``None`` is ``sys.stdout``.

    Examples
    --------
    >>> import tconv3d
    >>> tconv3d.show_config()                   # doctest: +ELLIPSIS
    tconv3d ...
      OpenMP compiled in:  ...
      default threads:     ...
      SIMD flags of build: ...
      SIMD kernels:        ... (this CPU runs: ...)
      bfloat16:            ...
    """
    from . import _kernels
    lines = [
        f"tconv3d {__version__}",
        f"  OpenMP compiled in:  {_kernels.openmp_enabled()}",
        f"  default threads:     {_kernels.default_num_threads()}",
        f"  SIMD flags of build: {' '.join(_kernels.simd_flags()) or 'none'}",
        f"  SIMD kernels:        {_kernels.simd_variant()} "
        f"(this CPU runs: {', '.join(_kernels.simd_variants_supported())})",
        "  bfloat16:            " + _BF16_PATHS[_kernels.bf16_variant()]
        + f" (this CPU runs: {', '.join(_kernels.bf16_variants_supported())})",
    ]
    print("\n".join(lines), file=file)
