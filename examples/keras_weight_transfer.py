"""Move a trained ``keras.layers.Conv3DTranspose`` to tconv3d, and back
====================================================================

``tconv3d.layers.Conv3DTranspose`` has Keras' arguments, weight layout and numbers:
``from_config(keras_layer.get_config())`` rebuilds the layer, ``set_weights(
keras_layer.get_weights())`` copies the kernel and bias, and the outputs agree to
float32 rounding. After training with tconv3d, ``get_weights()`` goes back to Keras.

Keras 3 runs here on its PyTorch backend (``KERAS_BACKEND=torch``, set below unless you
chose another). Without Keras the example says so and exits normally.

Run:  python examples/keras_weight_transfer.py   (pip install keras torch)
"""
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

from tconv3d.layers import Conv3DTranspose  # noqa: E402


def import_keras():
    try:
        import keras
    except ImportError as exc:
        print(f"keras is not installed ({exc}): nothing to transfer; "
              "pip install keras torch to run this example.")
        return None
    return keras


def main(seed=0):
    keras = import_keras()
    if keras is None:
        return None
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 8, 9, 10, 6)).astype(np.float32)

    # A Keras layer with non-trivial weights (a stand-in for a trained one).
    keras.utils.set_random_seed(seed)
    theirs = keras.layers.Conv3DTranspose(filters=4, kernel_size=3, strides=2, padding="same",
                                          activation="relu",
                                          bias_initializer="random_normal")
    start = time.perf_counter()
    y_keras = keras.ops.convert_to_numpy(theirs(x))
    keras_ms = (time.perf_counter() - start) * 1e3
    print(f"keras {keras.__version__} ({keras.backend.backend()} backend): {theirs.name}, "
          f"kernel {tuple(theirs.kernel.shape)}, output {y_keras.shape}")

    # Keras -> tconv3d: the configuration, then the weights.
    ours = Conv3DTranspose.from_config(theirs.get_config())
    ours.set_weights(theirs.get_weights())
    start = time.perf_counter()
    y_ours = ours(x)
    ours_ms = (time.perf_counter() - start) * 1e3
    difference = float(np.abs(y_ours - y_keras).max())
    print(f"tconv3d: {ours}")
    print(f"largest difference from Keras: {difference:.2e} "
          f"(forward: Keras {keras_ms:.1f} ms, tconv3d {ours_ms:.1f} ms, first call each)")

    # tconv3d -> Keras: change the weights on our side, copy them back.
    ours.set_weights([w * 0.5 for w in ours.get_weights()])
    theirs.set_weights(ours.get_weights())
    back = float(np.abs(keras.ops.convert_to_numpy(theirs(x)) - ours(x)).max())
    print(f"after copying tconv3d's weights back into Keras: largest difference {back:.2e}")
    return max(difference, back)


if __name__ == "__main__":
    difference = main()
    if difference is not None and difference >= 1e-4:
        sys.exit(1)   # (no sys.exit on success: the documentation runs this in its process)
