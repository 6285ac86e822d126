"""Recover a known transposed-convolution kernel from input/output pairs with Adam
===============================================================================

A "teacher" Conv3DTranspose with a random kernel and bias makes targets from random inputs;
a "student" layer with the same geometry starts from Keras' default initialization and
learns them back by minimising the mean squared error with tconv3d's Adam. The loss falls
by several orders of magnitude and the learned kernel matches the teacher's.

Run: ``python examples/train_layer.py`` (a few seconds on one core).
"""
import time

import numpy as np

from tconv3d.layers import Conv3DTranspose
from tconv3d.optimizers import Adam


def main(steps=200, seed=0, num_threads=None):
    rng = np.random.default_rng(seed)
    geometry = dict(filters=4, kernel_size=3, strides=2, padding="same", output_padding=1)
    teacher = Conv3DTranspose(**geometry, kernel_initializer="random_normal",
                              bias_initializer="random_normal", seed=seed,
                              input_shape=(6, 6, 6, 3), num_threads=num_threads)
    student = Conv3DTranspose(**geometry, seed=seed + 1, num_threads=num_threads)
    optimizer = Adam(learning_rate=0.02)

    start = time.perf_counter()
    for step in range(steps + 1):
        x = rng.standard_normal((8, 6, 6, 6, 3)).astype(np.float32)
        target = teacher(x)
        y = student(x)
        residual = y - target
        loss = float(np.mean(residual ** 2))
        student.backward(2 * residual / residual.size)  # d(mean squared error)/dy
        optimizer.apply_gradients(student)
        if step % 50 == 0:
            print(f"step {step:4d}   loss {loss:.3e}")
    elapsed = time.perf_counter() - start

    error = np.abs(student.kernel - teacher.kernel).max()
    print(f"{steps} steps in {elapsed:.1f} s; largest kernel error {error:.1e} "
          f"(kernel values of size {np.abs(teacher.kernel).max():.1e})")
    return loss, error


if __name__ == "__main__":
    main()
