"""The learned kernel of ``VolumeUpsampler(kernel="learned")``: least squares by L-BFGS with
the compiled gradient, over the same edge-replicated geometry as ``tconv3d._conv_plan``."""
import time
import warnings

import numpy as np
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from . import _conv_plan
from ._geometry import deconv_output_length
from ._ops import conv_transpose3d, conv_transpose3d_backward, conv_transpose3d_output_shape
from ._validation import make_geometry

# Float64 vectors of the kernel's size the fit holds at once: L-BFGS-B's history (2 per
# correction, 10 corrections by default) and about 8 working copies (taps, gradients).
WORKING_COPIES = 28


def window_call(x_shape, kernel_shape, factor, window):
    """Keyword arguments of the transposed convolution that computes the fewest positions
    holding the full-length positions ``window``, and the slices of its result there."""
    # Keras' centred crops: "same" with output_padding=0 keeps (n - 1)*s + k - 2*(k//2)
    # positions (none for an even kernel on one voxel), with None n*s, and "valid" keeps
    # all of them (no crop).
    for padding, output_padding in (("same", 0), ("same", None), ("valid", None)):
        if any(deconv_output_length(n, k, s, 1, padding, output_padding) < 1
               for n, k, s in zip(x_shape[1:4], kernel_shape[:3], factor)):
            continue
        geom = make_geometry(x_shape, kernel_shape, factor, padding, output_padding, 1,
                             "channels_last")
        if all(crop <= a and b <= crop + out
               for (a, b), crop, out in zip(window, geom.crop, geom.out_spatial)):
            break
    slices = tuple(slice(a - crop, b - crop) for (a, b), crop in zip(window, geom.crop))
    return {"strides": factor, "padding": padding, "output_padding": output_padding}, slices


def fit_kernel(volumes, targets, kernel, factor, *, max_iter, tol, num_threads, verbose,
                nonnegative=False):
    """Least-squares kernel and bias: L-BFGS with the compiled gradient.

    Minimises ``mean((upsample(volumes) - targets)**2)`` from ``kernel``, over the target
    voxels that are finite and whose inputs (the whole kernel box) are all finite; with
    ``nonnegative``, the taps are bounded below by 0. Data are divided by the root mean
    square of the targets used (values near 1 whatever the units) and the loss by its
    value at the starting kernel, so ``tol`` is relative to the starting error whatever
    the intensity units and offset (L-BFGS-B's ``ftol`` is absolute for losses below 1).
    Returns ``(kernel, bias, n_iter, mse)``.
    """
    embedded, taps = _conv_plan.embed_small(kernel, factor)
    n, c = volumes.shape[0], volumes.shape[-1]
    channels = np.moveaxis(volumes, -1, 1).reshape(n * c, *volumes.shape[1:4], 1)
    # The whole output in one convolution of the edge-replicated input it reads; window:
    # its positions in that convolution's full-length result.
    plan = _conv_plan.Plan(volumes.shape[1:4], embedded.shape, factor)
    source = [plan.reach(a, 0, length) for a, length in enumerate(plan.out_spatial)]
    x = _conv_plan.read_edge_replicated(channels.astype(np.float64), (0, 0, 0),
                                        plan.in_spatial, source)
    window = []
    for a, (lo, _) in enumerate(source):
        length, crop = plan.local(a, 0, plan.out_spatial[a], lo)
        window.append((crop, crop + length))
    call, slices = window_call(x.shape, (*embedded.shape, 1, 1), factor, window)
    # The residual lives in the frame of that convolution: targets are placed there once
    # and everything outside the outputs used is masked out.
    frame = conv_transpose3d_output_shape(x.shape, (*embedded.shape, 1, 1), **call)
    target = np.zeros(frame)
    target[(slice(None), *slices)] = np.moveaxis(targets, -1, 1).reshape(
        n * c, *targets.shape[1:4], 1)
    inside = np.zeros((1, *frame[1:]), bool)
    inside[(slice(None), *slices)] = True
    finite_x = np.isfinite(x)
    if finite_x.all() and np.isfinite(targets).all():
        scale = float(np.sqrt(np.mean(np.square(targets)))) or 1.0
    else:
        # Leave out the outputs with a non-finite target or a non-finite input anywhere
        # in their kernel box (the learned taps may all become nonzero).
        box = np.zeros((*embedded.shape, 1, 1))
        box[taps] = 1.0
        reached = conv_transpose3d(~finite_x, box, **call, num_threads=num_threads) > 0
        inside = inside & ~reached & np.isfinite(target)
        x = np.where(finite_x, x, 0.0)
        target = np.where(inside, target, 0.0)
        if not inside.any():
            raise ValueError(
                "kernel='learned' found no voxel of y to learn from: each is non-finite "
                "or has a non-finite voxel of X within the kernel_size="
                f"{kernel.shape} box of its inputs.")
        scale = float(np.sqrt(np.sum(np.square(target)) / np.count_nonzero(inside))) or 1.0
    used = int(np.count_nonzero(inside)) * (n * c if len(inside) == 1 else 1)
    x /= scale
    target /= scale
    evaluated = {}

    def loss_and_grad(theta):
        w = np.zeros_like(embedded)
        w[taps] = theta[:-1].reshape(kernel.shape)
        w = w[..., None, None]
        residual = conv_transpose3d(x, w, theta[-1:], **call, num_threads=num_threads)
        residual -= target
        residual *= inside
        loss = np.vdot(residual, residual) / used
        _, grad_w, grad_b = conv_transpose3d_backward(
            residual, x, w, **call, compute=("kernel", "bias"), num_threads=num_threads)
        evaluated["theta"], evaluated["loss"] = theta.copy(), loss
        grad = np.append(grad_w[..., 0, 0][taps].ravel(), grad_b)
        return loss, grad * (2.0 / used)

    start = time.perf_counter()
    iteration = [0]

    def report(theta):
        iteration[0] += 1
        if iteration[0] % verbose == 0 and np.array_equal(theta, evaluated["theta"]):
            print(f"[VolumeUpsampler] iteration {iteration[0]:4d}  "
                  f"mse {evaluated['loss'] * scale**2:.6g}  "
                  f"({time.perf_counter() - start:.2f} s)", flush=True)

    # The loop alternates the core's OpenMP threads with small BLAS calls (the loss, the
    # L-BFGS update), which gain nothing from BLAS threads: spinning BLAS threads would only
    # compete with the core's.
    with threadpool_limits(limits=1, user_api="blas"):
        theta0 = np.append(kernel.ravel(), 0.0)
        bounds = None
        if nonnegative:  # taps >= 0, bias free
            theta0[:-1] = np.maximum(theta0[:-1], 0.0)
            bounds = [(0.0, None)] * (len(theta0) - 1) + [(None, None)]
        unit = loss_and_grad(theta0)[0] or 1.0

        def relative_loss_and_grad(theta):
            loss, grad = loss_and_grad(theta)
            return loss / unit, grad / unit

        result = minimize(relative_loss_and_grad, theta0, jac=True, bounds=bounds,
                          method="L-BFGS-B", callback=report if verbose > 0 else None,
                          options={"maxiter": max_iter, "ftol": tol, "gtol": 0.0})
    if result.status == 1:
        warnings.warn(f"The learned fit stopped at max_iter={max_iter} iterations before "
                      f"reaching tol={tol}; increase max_iter.", ConvergenceWarning)
    if verbose > 0:
        print(f"[VolumeUpsampler] done: {result.nit} iterations, mse "
              f"{result.fun * unit * scale**2:.6g} ({time.perf_counter() - start:.2f} s): "
              f"{result.message}", flush=True)
    theta = result.x
    return (theta[:-1].reshape(kernel.shape), theta[-1] * scale, int(result.nit),
            float(result.fun * unit * scale**2))
