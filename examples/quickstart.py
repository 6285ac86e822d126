"""Quick start: upsample a batch of volumes with a 3D transposed convolution.

Run:  python examples/quickstart.py
"""
import time

import numpy as np

import tconv3d

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 32, 32, 32, 16), dtype=np.float32)   # (batch, d, h, w, channels)
kernel = rng.standard_normal((2, 2, 2, 8, 16), dtype=np.float32)  # (kd, kh, kw, filters, in)
bias = np.zeros(8, dtype=np.float32)

start = time.perf_counter()
y = tconv3d.conv_transpose3d(x, kernel, bias, strides=2, padding="same")
forward_ms = (time.perf_counter() - start) * 1e3
print(f"forward:  {x.shape} -> {y.shape} in {forward_ms:.1f} ms")

start = time.perf_counter()
grad_x, grad_kernel, grad_bias = tconv3d.conv_transpose3d_backward(
    np.ones_like(y), x, kernel, strides=2, padding="same")
backward_ms = (time.perf_counter() - start) * 1e3
print(f"backward: grad_x {grad_x.shape}, grad_kernel {grad_kernel.shape} in {backward_ms:.1f} ms")
tconv3d.show_config()
