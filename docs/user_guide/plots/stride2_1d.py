"""One axis of a stride-2 transposed convolution, and the windows Keras and PyTorch keep.

Input of 4 elements, kernel of 3 taps, stride 2: each input element scatters a scaled copy
of the kernel, 2 positions after the previous one, into the full result of
``(4 - 1)*2 + 3 = 9`` elements. The numbers are checked against tconv3d.
"""
import matplotlib.pyplot as plt
import numpy as np

import tconv3d

x = np.array([1.0, 2.0, 0.5, 1.5])
w = np.array([0.5, 1.0, 0.25])
n, k, s = len(x), len(w), 2
full = np.zeros((n - 1) * s + k)
for i in range(n):
    full[i * s:i * s + k] += x[i] * w


def tconv(padding, output_padding=None):
    """tconv3d along the depth axis of a (1, n, 1, 1, 1) volume."""
    y = tconv3d.conv_transpose3d(x.reshape(1, n, 1, 1, 1), w.reshape(k, 1, 1, 1, 1),
                                 strides=(s, 1, 1), padding=padding,
                                 output_padding=output_padding)
    return y.ravel()


assert np.allclose(tconv("valid"), full)                     # length 9: full[0:9]
assert np.allclose(tconv("same"), full[0:n * s])             # length 8: full[0:8]
assert np.allclose(tconv("same", (0, 0, 0)), full[1:8])      # PyTorch p=1, op=0: full[1:8]
# PyTorch padding=1, output_padding=1 keeps full[1:9], which no Keras padding gives.

colors = plt.cm.tab10(np.arange(n))
fig, ax = plt.subplots(figsize=(7, 3.3))
for i in range(n):
    ax.bar(i * s + 0.5, 0.8, width=0.9, bottom=4.6, color=colors[i], alpha=0.9)
    ax.text(i * s + 0.5, 5.0, f"x[{i}]", ha="center", va="center", fontsize=9)
    for j in range(k):
        p = i * s + j
        ax.bar(p + 0.5, 0.5, width=0.9, bottom=3.4 - 0.55 * i, color=colors[i], alpha=0.6)
        ax.text(p + 0.5, 3.65 - 0.55 * i, f"w[{j}]", ha="center", va="center", fontsize=8)
for p in range(len(full)):
    ax.text(p + 0.5, 1.05, f"{full[p]:g}", ha="center", va="center", fontsize=8)
    ax.text(p + 0.5, 0.55, str(p), ha="center", va="center", fontsize=8, color="0.4")
ax.add_patch(plt.Rectangle((0, 0.8), len(full), 0.5, fill=False, lw=1))
windows = [("Keras \"valid\": full[0:9]", 0, 9, -0.1, "0.3"),
           ("Keras \"same\": full[0:8], odd element cut on the right", 0, 8, -0.6,
            "tab:blue"),
           ("PyTorch padding=1, output_padding=1: full[1:9]", 1, 9, -1.1, "tab:red")]
for label, lo, hi, y, color in windows:
    ax.annotate("", xy=(lo, y), xytext=(hi, y),
                arrowprops=dict(arrowstyle="|-|", color=color, lw=1.5))
    ax.text(hi + 0.2, y, label, va="center", fontsize=8, color=color)
ax.text(-0.3, 5.0, "input", ha="right", va="center", fontsize=9)
ax.text(-0.3, 2.8, "x[i] * w,\nplaced at\ni*2 + j", ha="right", va="center", fontsize=9)
ax.text(-0.3, 1.05, "full", ha="right", va="center", fontsize=9)
ax.set_xlim(-2.2, 19.5)
ax.set_ylim(-1.5, 5.6)
ax.axis("off")
