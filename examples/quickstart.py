"""Quick start: a 3D transposed convolution as a function, then as a Keras-like layer
==================================================================================

The function takes numpy arrays in Keras' layouts -- ``x`` of shape
``(batch, depth, height, width, channels)`` and a kernel of shape
``(kd, kh, kw, filters, in_channels)`` -- and has Keras' ``strides``/``padding``
arithmetic; ``conv_transpose3d_backward`` gives the three gradients. The layer
``tconv3d.layers.Conv3DTranspose`` wraps the same compiled passes with weights,
activation, initializers and ``backward``, and takes a kernel from the function (or from
Keras or PyTorch) unchanged.

Run:  python examples/quickstart.py
"""
import time

import numpy as np

import tconv3d
from tconv3d.layers import Conv3DTranspose


def milliseconds(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1e3


def main(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 16, 16, 8), dtype=np.float32)  # (batch, d, h, w, channels)

    # 1. The function: kernel in Keras' layout (kd, kh, kw, filters, in_channels).
    kernel = rng.standard_normal((3, 3, 3, 4, 8), dtype=np.float32)
    bias = rng.standard_normal(4, dtype=np.float32)
    y, ms = milliseconds(tconv3d.conv_transpose3d, x, kernel, bias, strides=2, padding="same")
    print(f"function: conv_transpose3d {x.shape} -> {y.shape} in {ms:.1f} ms")
    (grad_x, grad_kernel, grad_bias), ms = milliseconds(
        tconv3d.conv_transpose3d_backward, np.ones_like(y), x, kernel, strides=2,
        padding="same")
    print(f"          backward: grad_x {grad_x.shape}, grad_kernel {grad_kernel.shape}, "
          f"grad_bias {grad_bias.shape} in {ms:.1f} ms")

    # 2. The layer: Keras' arguments; it builds on its first call.
    layer = Conv3DTranspose(filters=4, kernel_size=3, strides=2, padding="same",
                            activation="relu", seed=seed)
    z, ms = milliseconds(layer, x)
    print(f"layer:    {layer}")
    print(f"          forward {x.shape} -> {z.shape} in {ms:.1f} ms")
    grad_x = layer.backward(np.ones_like(z))  # fills layer.kernel_grad and layer.bias_grad
    print(f"          backward: grad_x {grad_x.shape}, kernel_grad {layer.kernel_grad.shape}")

    # 3. Same numbers: the layer, given the function's weights, without activation.
    linear = Conv3DTranspose(4, 3, strides=2, padding="same", weights=[kernel, bias])
    difference = float(np.abs(linear(x) - y).max())
    print(f"layer with the function's kernel and bias: largest difference {difference:.1e}")
    print()
    tconv3d.show_config()
    return difference


if __name__ == "__main__":
    main()
