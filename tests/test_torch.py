"""tconv3d.torch: the drop-in torch.nn.ConvTranspose3d, against PyTorch's own module."""
import copy
import io
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tconv3d  # noqa: E402
import tconv3d._torch_autograd as autograd_impl  # noqa: E402
import tconv3d.torch as tt  # noqa: E402
from tconv3d._geometry import torch_plan  # noqa: E402
from helpers import tol  # noqa: E402

F = torch.nn.functional
CHANNELS_LAST = torch.channels_last_3d
DTYPES = [torch.float32, torch.float64]
MEMORY_FORMATS = ["ncdhw", "channels_last_3d"]
SPATIAL = (5, 6, 7)  # odd, anisotropic: an axis mix-up changes the shapes

# Every geometry of the brief's grid: kernel 1..4, stride 1..3, padding 0..2, dilation 1..2,
# output_padding < max(stride, dilation). All give non-empty outputs on SPATIAL.
GEOMETRIES = [(k, s, p, d, op)
              for k, s, p, d in itertools.product(range(1, 5), range(1, 4), range(3), (1, 2))
              for op in range(max(s, d))]
# Per-axis arguments, including mixes that no single Keras padding expresses ("valid" on
# one axis, "same" on another, PyTorch-only crops).
ANISOTROPIC = [
    dict(kernel_size=(1, 2, 3), stride=(2, 1, 3), padding=(0, 1, 2), output_padding=(1, 0, 2),
         dilation=(1, 2, 1)),
    dict(kernel_size=(2, 3, 2), stride=(2, 1, 2), padding=(0, 1, 0)),   # valid x same x valid
    dict(kernel_size=(3, 3, 2), stride=(2, 2, 2), padding=(1, 1, 0), output_padding=(0, 1, 1)),
    dict(kernel_size=(4, 1, 3), stride=(3, 2, 1), padding=(2, 0, 1), output_padding=(1, 1, 0),
         dilation=(2, 1, 2)),
]


def _geometry_id(g):
    return "k{}s{}p{}d{}op{}".format(*g)


def _kwargs(geometry):
    k, s, p, d, op = geometry
    return dict(kernel_size=k, stride=s, padding=p, dilation=d, output_padding=op)


def _to_format(x, memory_format):
    return x.to(memory_format=CHANNELS_LAST) if memory_format == "channels_last_3d" else x


def _pair(kwargs, *, cin=4, cout=6, groups=1, bias=True, dtype=torch.float64, seed=0):
    """PyTorch's module and tconv3d's, with the same weights."""
    torch.manual_seed(seed)
    ref = torch.nn.ConvTranspose3d(cin, cout, groups=groups, bias=bias, dtype=dtype, **kwargs)
    ours = tt.ConvTranspose3d(cin, cout, groups=groups, bias=bias, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _run(module, x, grad_output=None):
    """Output and the gradients of <y, grad_output> w.r.t. input, weight and bias."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()  # a new leaf with x's strides
    y = module(x)
    if grad_output is None:
        generator = torch.Generator().manual_seed(1)
        grad_output = torch.randn(y.shape, dtype=y.dtype, generator=generator)
    y.backward(grad_output)
    grads = [x.grad, module.weight.grad, None if module.bias is None else module.bias.grad]
    return y.detach(), grads


def _assert_close(got, expected, dtype):
    if dtype == torch.float32:
        # Two float32 implementations summing in different orders: outputs and gradients
        # are sums of up to ~1000 unit-scale products with partial sums of size ~50, so
        # they differ by ~1e-5 absolute even where the result cancels to ~1e-3.
        t = dict(rtol=1e-4, atol=1e-4)
    else:
        t = tol(np.float64)
    torch.testing.assert_close(got, expected, rtol=t["rtol"], atol=t["atol"])


def _assert_matches_torch(ref, ours, x):
    y_ref, g_ref = _run(ref, x)
    y, g = _run(ours, x)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    _assert_close(y, y_ref, x.dtype)
    for name, a, e in zip(("input", "weight", "bias"), g, g_ref):
        assert (a is None) == (e is None), name
        if e is not None:
            assert a.shape == e.shape, name
            _assert_close(a, e, x.dtype)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Problems here are tiny: one thread is fastest for both libraries on a loaded machine.
    # test_gradients_do_not_depend_on_thread_count runs 1 and 2 threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _reset_warnings():
    tt._warned.clear()
    yield
    tt._warned.clear()


# --------------------------------------------------------------------------------------
# numbers: forward and all gradients equal PyTorch's
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_matches_torch_over_grid(geometry, dtype, memory_format):
    # groups and bias alternate over the grid so that every geometry meets both values
    index = GEOMETRIES.index(geometry)
    groups, bias = (1, 2)[index % 2], (True, False)[(index // 2) % 2]
    ref, ours = _pair(_kwargs(geometry), groups=groups, bias=bias, dtype=dtype, seed=index)
    x = _to_format(torch.randn(2, 4, *SPATIAL, dtype=dtype), memory_format)
    _assert_matches_torch(ref, ours, x)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kwargs", ANISOTROPIC)
def test_matches_torch_per_axis_arguments(kwargs, bias, groups):
    ref, ours = _pair(kwargs, cin=6, cout=3 * groups, groups=groups, bias=bias,
                      dtype=torch.float32)
    for memory_format in MEMORY_FORMATS:
        x = _to_format(torch.randn(2, 6, *SPATIAL), memory_format)
        _assert_matches_torch(ref, ours, x)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_gradcheck_fast_mode_over_grid(geometry):
    index = GEOMETRIES.index(geometry)
    groups = (1, 2)[index % 2]
    torch.manual_seed(index)
    x = torch.randn(1, 2, 5, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, *(geometry[0],) * 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * groups, dtype=torch.float64, requires_grad=True)
    _, s, p, d, op = geometry
    assert torch.autograd.gradcheck(
        lambda x, w, b: tt.conv_transpose3d(x, w, b, s, p, op, groups, d), (x, w, b),
        fast_mode=True)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("kwargs,groups", [
    (dict(kernel_size=2, stride=2), 1),                                       # exact, "valid"
    (dict(kernel_size=3, stride=2, padding=1), 1),                            # exact, "same"
    (dict(kernel_size=3, stride=2, padding=1, output_padding=1), 2),          # cropped window
    (dict(kernel_size=2, stride=1, dilation=2, output_padding=1), 1),         # bias-only plane
    (ANISOTROPIC[0], 1),
], ids=["k2s2", "k3s2p1", "k3s2p1op1-groups", "k2d2op1", "anisotropic"])
def test_gradcheck_full_jacobian(kwargs, groups, memory_format):
    torch.manual_seed(3)
    k = tt._triple(kwargs["kernel_size"])
    x = _to_format(torch.randn(1, 2, 2, 3, 2, dtype=torch.float64), memory_format)
    x.requires_grad_()
    w = torch.randn(2, 2, *k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2 * groups, dtype=torch.float64, requires_grad=True)
    args = {key: kwargs.get(key, 0 if "padding" in key else 1)
            for key in ("stride", "padding", "output_padding", "dilation")}
    assert torch.autograd.gradcheck(
        lambda x, w, b: tt.conv_transpose3d(x, w, b, groups=groups, **args), (x, w, b))


def test_grad_output_with_zero_strides_and_partial_requires_grad():
    ref, ours = _pair(dict(kernel_size=3, stride=2, padding=1, output_padding=1))
    ours.weight.requires_grad_(False)
    ref.weight.requires_grad_(False)
    x = torch.randn(2, 4, *SPATIAL, dtype=torch.float64)
    # y.sum().backward() hands the backward an expanded (all-zero-strides) grad_output
    _, g_ref = _run(ref, x, torch.ones((), dtype=torch.float64).expand(2, 6, 10, 12, 14))
    _, g = _run(ours, x, torch.ones((), dtype=torch.float64).expand(2, 6, 10, 12, 14))
    assert g[1] is None and g_ref[1] is None
    _assert_close(g[0], g_ref[0], torch.float64)
    _assert_close(g[2], g_ref[2], torch.float64)


def test_gradients_do_not_depend_on_thread_count():
    _, ours = _pair(dict(kernel_size=2, stride=2), cin=8, cout=8, dtype=torch.float32)
    x = torch.randn(2, 8, 6, 7, 5)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run(ours, x))
    finally:
        torch.set_num_threads(before)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# --------------------------------------------------------------------------------------
# derivatives of any order: the backward is made of tconv3d's differentiable Functions
# --------------------------------------------------------------------------------------
def _inputs(kernel_size, *, cin=2, cout=3, groups=1, bias=True, spatial=(5, 6, 5),
            memory_format="ncdhw", seed=0):
    """x, weight, bias (float64, requiring grad) of a call; bias None when not wanted."""
    torch.manual_seed(seed)
    x = _to_format(torch.randn(1, cin, *spatial, dtype=torch.float64), memory_format)
    w = torch.randn(cin, cout, *tt._triple(kernel_size), dtype=torch.float64)
    b = torch.randn(cout * groups, dtype=torch.float64) if bias else None
    return tuple(t.requires_grad_() for t in (x, w, b) if t is not None)


def _functional(stride, padding, output_padding, groups, dilation):
    def f(x, w, b=None):
        return tt.conv_transpose3d(x, w, b, stride, padding, output_padding, groups, dilation)
    return f


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_gradgradcheck_fast_mode_over_grid(geometry, memory_format):
    # second derivatives w.r.t. input, weight, bias and grad_output; groups and bias
    # alternate over the grid so that every geometry meets both values of each
    index = GEOMETRIES.index(geometry)
    groups, bias = (1, 2)[index % 2], (True, False)[(index // 2) % 2]
    k, s, p, d, op = geometry
    args = _inputs(k, groups=groups, bias=bias, memory_format=memory_format, seed=index)
    assert torch.autograd.gradgradcheck(_functional(s, p, op, groups, d), args,
                                        fast_mode=True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kwargs,groups", [
    (dict(kernel_size=(1, 2, 3), stride=(2, 1, 3), padding=(0, 1, 2), output_padding=(1, 0, 2),
          dilation=(1, 2, 1)), 1),
    (dict(kernel_size=(4, 1, 3), stride=(3, 2, 1), padding=(2, 0, 1), output_padding=(1, 1, 0),
          dilation=(2, 1, 2)), 2),
    (dict(kernel_size=(2, 3, 2), stride=(2, 1, 2), padding=(0, 1, 0)), 3),
], ids=["anisotropic", "anisotropic-groups", "valid-same-mix-groups"])
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_gradgradcheck_fast_mode_per_axis_arguments(kwargs, groups, bias, memory_format):
    args = _inputs(kwargs["kernel_size"], cin=3 * groups, cout=2, groups=groups, bias=bias,
                   memory_format=memory_format)
    f = _functional(*(kwargs.get(key, 0 if "padding" in key else 1)
                      for key in ("stride", "padding", "output_padding")), groups,
                    kwargs.get("dilation", 1))
    assert torch.autograd.gradgradcheck(f, args, fast_mode=True, check_fwd_over_rev=True)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(stride=2, padding=1, output_padding=1)],
                         ids=["exact", "cropped"])
def test_gradgradcheck_full_jacobian(kwargs, memory_format):
    args = _inputs(2, cout=2, groups=2, spatial=(2, 2, 1), memory_format=memory_format)
    f = _functional(kwargs["stride"], kwargs.get("padding", 0),
                    kwargs.get("output_padding", 0), 2, 1)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("kwargs,groups", [
    (dict(kernel_size=3, stride=2), 1),                                        # the issue's
    (dict(kernel_size=3, stride=2, padding=1, output_padding=1), 2),           # cropped window
    (dict(kernel_size=2, stride=1, dilation=2, output_padding=1), 1),          # bias-only plane
], ids=["k3s2", "k3s2p1op1-groups", "k2d2op1"])
def test_gradient_penalty_matches_torch(kwargs, groups, memory_format):
    # issue 18: y.mean() + |dy/dx|^2 (WGAN-GP, Jacobian regularisers) lost its second
    # term under once_differentiable
    ref, ours = _pair(kwargs, groups=groups)
    x = _to_format(torch.randn(2, 4, 3, 4, 3, dtype=torch.float64), memory_format)
    results = []
    for module in (ref, ours):
        module.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_()
        y = module(xi)
        (g,) = torch.autograd.grad(y.sum(), xi, create_graph=True)
        assert g.requires_grad
        (y.mean() + (g ** 2).sum()).backward()
        results.append((g.detach(), module.weight.grad, module.bias.grad))
    for got, expected in zip(*results[::-1]):
        _assert_close(got, expected, torch.float64)


def test_second_derivatives_match_torch_for_every_pair_of_operands():
    ref, ours = _pair(dict(kernel_size=3, stride=2, padding=1, output_padding=1), groups=2)
    x = torch.randn(2, 4, 3, 4, 3, dtype=torch.float64)
    grads = []
    for module in (ref, ours):
        xi = x.detach().requires_grad_()
        operands = (xi, module.weight, module.bias)
        y = module(xi)
        first = torch.autograd.grad(y.square().sum(), operands, create_graph=True)
        # d/d(operands) of <first-order gradient, fixed random direction>, for each gradient
        generator = torch.Generator().manual_seed(2)
        grads.append([torch.autograd.grad(
            (g * torch.randn(g.shape, dtype=g.dtype, generator=generator)).sum(), operands,
            retain_graph=True, allow_unused=True, materialize_grads=True) for g in first])
    for row_ref, row in zip(*grads):
        for e, a in zip(row_ref, row):
            _assert_close(a, e, torch.float64)


def test_first_order_gradients_are_the_same_with_create_graph():
    # the create_graph path splits the backward into Functions, with the same numbers
    _, ours = _pair(dict(kernel_size=4, stride=2, padding=1), groups=2, dtype=torch.float32)
    x = torch.randn(2, 4, *SPATIAL).requires_grad_()
    y = ours(x)
    grad_output = torch.randn(y.shape)
    operands = (x, ours.weight, ours.bias)
    plain = torch.autograd.grad(y, operands, grad_output, retain_graph=True)
    graph = torch.autograd.grad(y, operands, grad_output, create_graph=True)
    assert graph[0].requires_grad and graph[1].requires_grad  # grad_bias: grad_output only
    assert all(torch.equal(a, b) for a, b in zip(plain, graph))


# --------------------------------------------------------------------------------------
# torch.func: grad, vjp, jvp, jacrev, jacfwd, hessian, vmap
# --------------------------------------------------------------------------------------
def _func_pair(groups=1, seed=0):
    return _pair(dict(kernel_size=3, stride=2, padding=1, output_padding=1), cin=4,
                 cout=2 * groups, groups=groups, seed=seed)


def _params(module):
    return {name: p.detach() for name, p in module.named_parameters()}


def _assert_trees_close(got, expected):
    """Nested tuples/dicts of float64 tensors, the same structure and close values."""
    (got, got_spec), (expected, expected_spec) = map(torch.utils._pytree.tree_flatten,
                                                     (got, expected))
    assert got_spec == expected_spec
    for a, e in zip(got, expected):
        assert a.shape == e.shape
        _assert_close(a, e, torch.float64)


def test_func_grad_of_functional_call_matches_torch():
    # issue 18: raised "must override the setup_context staticmethod"
    ref, ours = _func_pair()
    x = torch.randn(2, 4, 3, 4, 3, dtype=torch.float64)
    grads = [torch.func.grad(lambda p, m=m: torch.func.functional_call(m, p, (x,)).sum())(
        _params(m)) for m in (ref, ours)]
    _assert_trees_close(grads[1], grads[0])


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("groups", [1, 2])
def test_func_vmap_of_the_module_matches_torch(groups, memory_format):
    # issue 18: torch.func.vmap(m)(x[:, None]) raised
    ref, ours = _func_pair(groups)
    x = _to_format(torch.randn(3, 4, 3, 4, 3, dtype=torch.float64), memory_format)
    _assert_close(torch.func.vmap(ours)(x[:, None]), torch.func.vmap(ref)(x[:, None]),
                  torch.float64)
    # the vmapped dimension anywhere, and unbatched samples
    f = torch.func.vmap(ours, in_dims=2, out_dims=1)
    expected = torch.func.vmap(ref, in_dims=2, out_dims=1)(x[:, :, None])
    _assert_close(f(x[:, :, None]), expected, torch.float64)
    _assert_close(torch.func.vmap(ours)(x), torch.func.vmap(ref)(x), torch.float64)


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (0, 0, None), (None, 0, None), (None, None, 0),
                                     (1, 0, None), (None, 2, 0)])
@pytest.mark.parametrize("groups", [1, 2])
def test_func_vmap_over_weights_and_bias(in_dims, groups):
    torch.manual_seed(0)
    size = 3
    shapes = [(2, 4, 3, 4, 3), (4, 2, 3, 3, 2), (2 * groups,)]
    args = []
    for shape, dim in zip(shapes, in_dims):
        t = torch.randn(shape, dtype=torch.float64)
        args.append(t if dim is None else torch.stack([t] * size, dim) + torch.randn(
            (size, *shape), dtype=torch.float64).movedim(0, dim))
    kwargs = dict(stride=2, padding=1, output_padding=(1, 0, 1), groups=groups)
    got = torch.func.vmap(lambda x, w, b: tt.conv_transpose3d(x, w, b, **kwargs),
                          in_dims=in_dims)(*args)
    expected = torch.func.vmap(lambda x, w, b: F.conv_transpose3d(x, w, b, **kwargs),
                               in_dims=in_dims)(*args)
    _assert_close(got, expected, torch.float64)


def test_func_vjp_and_jvp_match_torch():
    ref, ours = _func_pair(groups=2)
    x = torch.randn(2, 4, 3, 4, 3, dtype=torch.float64)
    params = _params(ours)
    generator = torch.Generator().manual_seed(4)
    results = []
    for m in (ref, ours):
        def f(x, p, m=m):
            return torch.func.functional_call(m, p, (x,))
        y, vjp_fn = torch.func.vjp(f, x, params)
        cotangent = torch.randn(y.shape, dtype=y.dtype, generator=generator.manual_seed(5))
        tangents = (torch.randn(x.shape, dtype=x.dtype, generator=generator.manual_seed(6)),
                    {k: torch.randn(v.shape, dtype=v.dtype, generator=generator)
                     for k, v in params.items()})
        results.append((y, vjp_fn(cotangent), torch.func.jvp(f, (x, params), tangents)))
    _assert_trees_close(results[1], results[0])


def test_func_jacobians_and_hessian_match_torch():
    ref, ours = _func_pair()
    x = torch.randn(1, 4, 2, 2, 1, dtype=torch.float64)
    params = _params(ours)
    results = []
    for m in (ref, ours):
        def f(x, p, m=m):
            return torch.func.functional_call(m, p, (x,))

        def loss(x, p, m=m):
            return torch.func.functional_call(m, p, (x,)).square().sum()
        results.append((torch.func.jacrev(f, argnums=(0, 1))(x, params),
                        torch.func.jacfwd(f, argnums=(0, 1))(x, params),
                        torch.func.hessian(loss, argnums=(0, 1))(x, params),
                        torch.func.jacrev(torch.func.jacrev(loss))(x, params)))
    _assert_trees_close(results[1], results[0])


def test_func_per_sample_gradients_match_torch():
    ref, ours = _func_pair(groups=2)
    x = torch.randn(3, 4, 3, 4, 3, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        def loss(p, sample, m=m):
            return torch.func.functional_call(m, p, (sample[None],)).square().sum()
        grads.append(torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(_params(m), x))
    _assert_trees_close(grads[1], grads[0])


# --------------------------------------------------------------------------------------
# padding mapping, layouts and copies
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_plan_is_what_tconv3d_computes(geometry):
    k, s, p, d, op = geometry
    plan = torch_plan(SPATIAL, (k,) * 3, (s,) * 3, (p,) * 3, (op,) * 3, (d,) * 3)
    expected_out = tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n in SPATIAL)
    assert plan.out == expected_out
    shape = tconv3d.conv_transpose3d_output_shape(
        (1, *SPATIAL, 2), (k, k, k, 3, 2), strides=s, padding=plan.padding,
        output_padding=plan.output_padding, dilation_rate=d)
    assert shape[1:4] == expected_out


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2, stride=2),
                                    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
                                    dict(kernel_size=4, stride=2, padding=3, dilation=2,
                                         output_padding=1)])
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_one_call_copies_neither_input_nor_output(monkeypatch, memory_format, kwargs):
    calls = []

    def spy(x, kernel, bias=None, **kwargs):
        y = tconv3d.conv_transpose3d(x, kernel, bias, **kwargs)
        calls.append((x, kwargs["data_format"], y))
        return y

    monkeypatch.setattr(autograd_impl, "_tconv_forward", spy)
    ours = tt.ConvTranspose3d(4, 6, **kwargs)
    x = _to_format(torch.randn(2, 4, *SPATIAL), memory_format)
    with torch.no_grad():
        y = ours(x)
    [(xa, data_format, ya)] = calls
    assert data_format == ("channels_last" if memory_format == "channels_last_3d"
                           else "channels_first")
    assert np.shares_memory(xa, x.numpy())
    assert y.data_ptr() == ya.ctypes.data
    if memory_format == "channels_last_3d":
        assert y.is_contiguous(memory_format=CHANNELS_LAST) and not y.is_contiguous()
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("kwargs", [dict(kernel_size=4, stride=2, padding=1, groups=2),
                                    dict(kernel_size=2, stride=1, dilation=2,
                                         output_padding=1)])
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_output_keeps_the_input_memory_format(kwargs, memory_format):
    ours = tt.ConvTranspose3d(4, 6, **kwargs)
    x = _to_format(torch.randn(2, 4, *SPATIAL), memory_format).requires_grad_()
    y = ours(x)
    y.sum().backward()
    if memory_format == "channels_last_3d":
        assert y.is_contiguous(memory_format=CHANNELS_LAST) and not y.is_contiguous()
        assert x.grad.is_contiguous(memory_format=CHANNELS_LAST)
    else:
        assert y.is_contiguous() and x.grad.is_contiguous()
    assert ours.weight.grad.is_contiguous()


def test_strided_input_views():
    ref, ours = _pair(dict(kernel_size=3, stride=2, padding=1))
    big = torch.randn(3, 9, 10, 12, 14, dtype=torch.float64)
    x = big[::2, 1::2, 1:6, ::2, 3:10]  # no memory format at all
    _assert_matches_torch(ref, ours, x)


# --------------------------------------------------------------------------------------
# the module: signature, parameters, state_dict, torch.nn behaviour
# --------------------------------------------------------------------------------------
def test_signature_parameters_and_initialisation_match_torch():
    import inspect
    assert (inspect.signature(tt.ConvTranspose3d.__init__)
            == inspect.signature(torch.nn.ConvTranspose3d.__init__))
    kwargs = dict(in_channels=6, out_channels=4, kernel_size=(2, 3, 1), stride=2, padding=1,
                  output_padding=1, groups=2, bias=True, dilation=1)
    torch.manual_seed(5)
    ref = torch.nn.ConvTranspose3d(**kwargs)
    torch.manual_seed(5)
    ours = tt.ConvTranspose3d(**kwargs)
    assert isinstance(ours, torch.nn.ConvTranspose3d)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    assert ours.weight.shape == (6, 2, 2, 3, 1)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    assert repr(ours) == repr(ref)


def test_state_dict_round_trip():
    ref = torch.nn.ConvTranspose3d(4, 6, 3, stride=2, padding=1, groups=2)
    ours = tt.ConvTranspose3d(4, 6, 3, stride=2, padding=1, groups=2)
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.ConvTranspose3d(4, 6, 3, stride=2, padding=1, groups=2)
    back.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
        assert torch.equal(back.state_dict()[key], value)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    fresh = tt.ConvTranspose3d(4, 6, 3, stride=2, padding=1, groups=2, bias=True)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(1, 4, 3, 4, 5)
    with torch.no_grad():
        _assert_close(fresh(x), ref(x), torch.float32)


def test_bias_free_module_has_no_bias():
    ours = tt.ConvTranspose3d(4, 6, 2, stride=2, bias=False)
    assert ours.bias is None and set(ours.state_dict()) == {"weight"}


def test_padding_mode_other_than_zeros_is_refused_like_torch():
    for cls in (torch.nn.ConvTranspose3d, tt.ConvTranspose3d):
        with pytest.raises(ValueError, match="zeros"):
            cls(2, 2, 3, padding_mode="reflect")


def test_output_size_argument():
    ref, ours = _pair(dict(kernel_size=3, stride=2, padding=1))
    x = torch.randn(1, 4, *SPATIAL, dtype=torch.float64)
    size = [10, 12, 14]
    with torch.no_grad():
        y, y_ref = ours(x, output_size=size), ref(x, output_size=size)
    assert y.shape[2:] == tuple(size)
    _assert_close(y, y_ref, torch.float64)


def test_unbatched_input():
    ref, ours = _pair(dict(kernel_size=2, stride=2))
    x = torch.randn(4, *SPATIAL, dtype=torch.float64)
    _assert_matches_torch(ref, ours, x)


def test_empty_batch_matches_torch():
    ref, ours = _pair(dict(kernel_size=2, stride=2))
    x = torch.randn(0, 4, *SPATIAL, dtype=torch.float64)
    with torch.no_grad():
        assert ours(x).shape == ref(x).shape == (0, 6, 10, 12, 14)


def test_inference_mode_and_no_grad():
    ref, ours = _pair(dict(kernel_size=2, stride=2))
    x = torch.randn(1, 4, *SPATIAL, dtype=torch.float64)
    with torch.inference_mode():
        y = ours(x)
        _assert_close(y, ref(x), torch.float64)
    with torch.no_grad():
        assert ours(x).grad_fn is None


@pytest.mark.parametrize("grad_mode", ["no_grad", "enable_grad"])
def test_forward_mode_ad_under_any_grad_mode(grad_mode):
    # Calls that nothing differentiates skip autograd.Function; forward mode differentiates
    # even under no_grad, and with no tensor requiring grad.
    import torch.autograd.forward_ad as fwAD
    ref, ours = _pair(dict(kernel_size=3, stride=2, padding=1), groups=2)
    for p in (*ref.parameters(), *ours.parameters()):
        p.requires_grad_(False)
    x = torch.randn(1, 4, *SPATIAL, dtype=torch.float64)
    tangent = torch.randn_like(x)
    results = []
    for m in (ref, ours):
        with fwAD.dual_level(), getattr(torch, grad_mode)():
            y = m(fwAD.make_dual(x, tangent))
            results.append(tuple(t.clone() for t in fwAD.unpack_dual(y)))
    assert results[1][1] is not None
    _assert_close(results[1][0], results[0][0], torch.float64)
    _assert_close(results[1][1], results[0][1], torch.float64)


ACTIVATIONS = [  # (tconv3d's spec, PyTorch's function)
    ("relu", torch.relu), ("leaky_relu", lambda y: F.leaky_relu(y, 0.2)),
    (tconv3d.activations.get("leaky_relu").bind(negative_slope=0.01),
     lambda y: F.leaky_relu(y, 0.01)),
    ("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("gelu", F.gelu),
    (tconv3d.activations.get("gelu").bind(approximate=True),
     lambda y: F.gelu(y, approximate="tanh")),
    ("silu", F.silu), ("swish", F.silu), ("linear", lambda y: y)]


@pytest.fixture
def torch_activations(monkeypatch):
    """Counts the activations applied by PyTorch's functions (not fused)."""
    calls = []
    table = dict(autograd_impl._TORCH_ACTIVATIONS)
    monkeypatch.setattr(autograd_impl, "_TORCH_ACTIVATIONS", {
        name: (lambda y, alpha, f=f, name=name: calls.append(name) or f(y, alpha))
        for name, f in table.items()})
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation, torch_fn", ACTIVATIONS,
                         ids=[str(a) for a, _ in ACTIVATIONS])
def test_activation_fused_at_inference_and_differentiated_otherwise(
        torch_activations, activation, torch_fn, dtype):
    g = torch.Generator().manual_seed(3)
    x = 4 * torch.randn(2, 4, *SPATIAL, dtype=dtype, generator=g)
    w = torch.randn(4, 3, 3, 2, 3, dtype=dtype, generator=g)
    b = torch.randn(6, dtype=dtype, generator=g)
    kwargs = dict(stride=(2, 1, 2), padding=1, output_padding=(1, 0, 0), groups=2)
    for x_format in (x, x.to(memory_format=CHANNELS_LAST)):
        with torch.no_grad():
            got = tt.conv_transpose3d(x_format, w, b, **kwargs, activation=activation)
            expected = torch_fn(F.conv_transpose3d(x, w, b, **kwargs))
        assert torch_activations == []   # fused into the compiled forward
        _assert_close(got, expected, dtype)
    # recorded by autograd: PyTorch's function, and its gradients
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = tt.conv_transpose3d(*leaves, **kwargs, activation=activation)
    assert len(torch_activations) == 1
    leaves_ref = [t.clone().requires_grad_() for t in (x, w, b)]
    y_ref = torch_fn(F.conv_transpose3d(*leaves_ref, **kwargs))
    _assert_close(y, y_ref, dtype)
    r = torch.randn(y.shape, dtype=dtype, generator=g)
    for grad, grad_ref in zip(torch.autograd.grad(y, leaves, r),
                              torch.autograd.grad(y_ref, leaves_ref, r)):
        _assert_close(grad, grad_ref, dtype)


def test_activation_after_rounding_for_half_dtypes():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, *SPATIAL, generator=g)
    w = torch.randn(4, 2, 3, 3, 3, generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        args = (x.to(dtype), w.to(dtype))
        with torch.no_grad():
            got = tt.conv_transpose3d(*args, stride=2, activation="tanh")
            assert got.dtype == dtype
            torch.testing.assert_close(got, torch.tanh(tt.conv_transpose3d(*args, stride=2)),
                                       rtol=0, atol=0)


def test_activation_on_pytorchs_op_and_traced():
    x = torch.randn(1, 2, 3, 3, 3)
    w = torch.randn(2, 2, 2, 2, 2)
    with pytest.warns(tt.TconvFallbackWarning):
        traced = torch.jit.trace(
            lambda x, w: tt.conv_transpose3d(x, w, stride=2, activation="relu"), (x, w))
    _assert_close(traced(x, w), torch.relu(F.conv_transpose3d(x, w, stride=2)),
                  torch.float32)
    with torch.no_grad():   # PyTorch's op for an empty batch
        y = tt.conv_transpose3d(x[:0], w, stride=2, activation="sigmoid")
    assert y.shape == (0, 2, 6, 6, 6)


@pytest.mark.parametrize("activation, error", [("softmax", ValueError), ("elu", ValueError),
                                               (3, TypeError), (torch.relu, TypeError)])
def test_activation_refused_before_any_work(activation, error):
    with pytest.raises(error, match="activation"):
        tt.conv_transpose3d(torch.ones(1, 2, 2, 2, 2), torch.ones(2, 2, 2, 2, 2),
                            activation=activation)


def test_frozen_layer_records_no_graph():
    ref, ours = _pair(dict(kernel_size=2, stride=2))
    for p in ours.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 4, *SPATIAL, dtype=torch.float64)
    y = ours(x)   # grad enabled, nothing requires grad
    assert y.grad_fn is None and not y.requires_grad
    _assert_close(y, ref(x).detach(), torch.float64)
    x.requires_grad_()
    assert ours(x).grad_fn is not None


class _TorchFunctionSubclass(torch.Tensor):
    """Like MONAI's MetaTensor: a __torch_function__ subclass that outputs keep."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


def test_torch_function_subclass_is_kept():
    ref, ours = _pair(dict(kernel_size=3, stride=2, padding=1))
    x = torch.randn(1, 4, *SPATIAL, dtype=torch.float64).as_subclass(_TorchFunctionSubclass)
    y_ref, g_ref = _run(ref, x)
    y, g = _run(ours, x)
    assert type(y) is type(y_ref) is _TorchFunctionSubclass
    _assert_close(y.as_subclass(torch.Tensor), y_ref.as_subclass(torch.Tensor), torch.float64)
    for a, e in zip(g, g_ref):
        _assert_close(a.as_subclass(torch.Tensor), e.as_subclass(torch.Tensor), torch.float64)


def test_fake_tensors_get_torch_shapes():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    ours = tt.ConvTranspose3d(4, 6, 3, stride=2, padding=1, output_padding=1)
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = ours(torch.empty(2, 4, *SPATIAL))
    assert type(y) is FakeTensor and y.shape == (2, 6, 10, 12, 14)


# --------------------------------------------------------------------------------------
# fallbacks and errors: PyTorch's own op
# --------------------------------------------------------------------------------------
def test_other_dtypes_fall_back_with_one_warning():
    """Half precisions run on tconv3d (test_bfloat16.py); complex goes to PyTorch."""
    ref, ours = _pair(dict(kernel_size=2, stride=2))
    ref, ours = ref.to(torch.complex64), ours.to(torch.complex64)
    x = torch.randn(1, 4, 3, 3, 3, dtype=torch.complex64)
    with pytest.warns(tt.TconvFallbackWarning, match="torch.complex64"):
        y = ours(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tt.TconvFallbackWarning)
        y_again = ours(x)  # warned once only
    assert torch.equal(y, ref(x)) and torch.equal(y_again, y)


def test_other_devices_fall_back_with_a_warning():
    ours = tt.ConvTranspose3d(4, 6, 2, stride=2, device="meta")
    x = torch.empty(2, 4, *SPATIAL, device="meta")
    with pytest.warns(tt.TconvFallbackWarning, match="meta"):
        y = ours(x)
    assert y.device.type == "meta" and y.shape == (2, 6, 10, 12, 14)


@pytest.mark.parametrize("make_input,weight_dtype", [
    (lambda: torch.randn(1, 3, 4, 4, 4), torch.float32),        # wrong channel count
    (lambda: torch.randn(1, 4, 4, 4, 4), torch.float64),        # input float32, weight float64
    (lambda: torch.randn(4, 4, 4), torch.float32),              # 3-D input
])
def test_invalid_calls_raise_torch_errors(make_input, weight_dtype):
    ref, ours = _pair(dict(kernel_size=2, stride=2), dtype=weight_dtype)
    x = make_input()
    with pytest.raises(RuntimeError) as expected:
        ref(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError) as got:
            ours(x)
    assert str(got.value) == str(expected.value)


def test_invalid_functional_arguments_raise_torch_errors():
    x, w = torch.randn(1, 2, 3, 3, 3), torch.randn(2, 2, 3, 3, 3)
    for kwargs in (dict(output_padding=2, stride=2), dict(padding=-1), dict(stride=0),
                   dict(padding=3)):  # the last gives an empty output
        with pytest.raises(RuntimeError) as expected:
            F.conv_transpose3d(x, w, **kwargs)
        with pytest.raises(RuntimeError) as got:
            tt.conv_transpose3d(x, w, **kwargs)
        assert str(got.value) == str(expected.value)


# --------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------
class _TinyUNet(torch.nn.Module):
    """Two-level 3D U-Net: Conv3d encoders, k2 s2 ConvTranspose3d decoders, skips."""

    def __init__(self, c=4):
        super().__init__()
        conv = torch.nn.Conv3d
        self.enc1 = torch.nn.Sequential(conv(1, c, 3, padding=1), torch.nn.ReLU())
        self.enc2 = torch.nn.Sequential(conv(c, 2 * c, 2, stride=2), torch.nn.ReLU(),
                                        conv(2 * c, 2 * c, 3, padding=1), torch.nn.ReLU())
        self.bottom = torch.nn.Sequential(conv(2 * c, 4 * c, 2, stride=2), torch.nn.ReLU())
        self.up2 = torch.nn.ConvTranspose3d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = torch.nn.Sequential(conv(4 * c, 2 * c, 3, padding=1), torch.nn.ReLU())
        self.up1 = torch.nn.ConvTranspose3d(2 * c, c, 2, stride=2, bias=False)
        self.dec1 = torch.nn.Sequential(conv(2 * c, c, 3, padding=1), torch.nn.ReLU())
        self.head = conv(c, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up2(self.bottom(e2)), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class _CustomConvTranspose(torch.nn.ConvTranspose3d):
    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_convert_unet_gives_the_same_outputs_and_gradients(memory_format):
    torch.manual_seed(0)
    model = _TinyUNet().double()  # float64: ReLU gates flip on float32 rounding differences
    model.extra = _CustomConvTranspose(2, 2, 1)  # a subclass: left alone
    original = copy.deepcopy(model)
    if memory_format == "channels_last_3d":
        model = model.to(memory_format=CHANNELS_LAST)
        original = original.to(memory_format=CHANNELS_LAST)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    keys = list(model.state_dict())
    with pytest.warns(UserWarning, match="'extra'.*_CustomConvTranspose"):
        converted = tt.convert(model)
    assert converted is model
    assert type(model.up1) is tt.ConvTranspose3d and type(model.up2) is tt.ConvTranspose3d
    assert type(model.extra) is _CustomConvTranspose
    assert type(model.enc1[0]) is torch.nn.Conv3d
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params))  # shared, not copied

    x = _to_format(torch.randn(2, 1, 8, 8, 8, dtype=torch.float64), memory_format)
    for step in range(2):  # the optimizer built before convert still trains the model
        y_ref, y = original(x), model(x)
        _assert_close(y, y_ref, torch.float64)
        original.zero_grad()
        model.zero_grad()
        y_ref.square().mean().backward()
        y.square().mean().backward()
        for (name, p), p_ref in zip(model.named_parameters(), original.parameters()):
            assert (p.grad is None) == (p_ref.grad is None), name  # `extra` is unused
            if p.grad is not None:
                _assert_close(p.grad, p_ref.grad, torch.float64)
        optimizer.step()
        with torch.no_grad():
            for p in original.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad


def test_convert_module_itself_and_lazy_modules():
    conv = torch.nn.ConvTranspose3d(2, 3, 2, stride=2)
    weight, bias = conv.weight, conv.bias
    new = tt.convert(conv)
    assert new is conv and type(new) is tt.ConvTranspose3d  # converted in place
    assert new.weight is weight and new.bias is bias
    lazy = torch.nn.Sequential(torch.nn.LazyConvTranspose3d(3, 2))
    with pytest.warns(UserWarning, match="'0'.*lazy module: run one forward pass"):
        assert type(tt.convert(lazy)[0]) is torch.nn.LazyConvTranspose3d
    lazy(torch.randn(1, 2, 3, 3, 3))  # materialised: now a torch.nn.ConvTranspose3d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(tt.convert(lazy)[0]) is tt.ConvTranspose3d
    conv.eval()
    assert not tt.ConvTranspose3d.from_torch(conv).training


def _norm_wrappers():
    import torch.nn.utils.prune as prune
    p = torch.nn.utils.parametrizations
    return {
        "spectral_norm": (torch.nn.utils.spectral_norm, torch.nn.utils.remove_spectral_norm),
        "weight_norm": (torch.nn.utils.weight_norm, torch.nn.utils.remove_weight_norm),
        "parametrizations.weight_norm": (
            p.weight_norm, lambda m: torch.nn.utils.parametrize.remove_parametrizations(
                m, "weight")),
        "parametrizations.spectral_norm": (
            p.spectral_norm, lambda m: torch.nn.utils.parametrize.remove_parametrizations(
                m, "weight")),
        "prune": (lambda m: prune.l1_unstructured(m, "weight", amount=0.3),
                  lambda m: prune.remove(m, "weight")),
        "prune-twice": (lambda m: prune.ln_structured(
            prune.random_unstructured(m, "weight", amount=0.2), "weight", amount=0.5, n=2,
            dim=1), lambda m: prune.remove(m, "weight")),
    }


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*is deprecated:FutureWarning")
@pytest.mark.parametrize("wrapper", list(_norm_wrappers()))
def test_convert_modules_with_computed_weights(wrapper):
    # issue 18: convert raised "cannot assign 'torch.FloatTensor' as parameter 'weight'"
    wrap, unwrap = _norm_wrappers()[wrapper]

    def build():
        torch.manual_seed(0)  # the same weights, masks and power-iteration vectors
        return torch.nn.Sequential(
            wrap(torch.nn.ConvTranspose3d(4, 3, 3, stride=2, padding=1, groups=1,
                                          dtype=torch.float64)),
            torch.nn.Tanh(),
            wrap(torch.nn.ConvTranspose3d(3, 2, 2, stride=2, dtype=torch.float64)))

    ref, model = build(), build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, report = tt.convert(model, report=True)
    assert report.converted == ("0", "2") and report.skipped == {}
    assert all(isinstance(model[i], tt.ConvTranspose3d) for i in (0, 2))
    assert list(model.state_dict()) == list(ref.state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref, model)]
    x = torch.randn(2, 4, 3, 4, 3, dtype=torch.float64)
    for step in range(3):  # the wrapper keeps working through optimizer steps
        outputs = []
        for m, optimizer in zip((ref, model), optimizers):
            optimizer.zero_grad()
            y = m(x)
            y.square().mean().backward()
            optimizer.step()
            outputs.append((y.detach(), [p.grad for p in m.parameters()]))
        (y_ref, g_ref), (y, g) = outputs
        _assert_close(y, y_ref, torch.float64)
        for a, e in zip(g, g_ref):
            _assert_close(a, e, torch.float64)
    for key, value in ref.state_dict().items():
        _assert_close(model.state_dict()[key], value, torch.float64)
    ref.eval()
    model.eval()
    with torch.no_grad():
        _assert_close(model(x), ref(x), torch.float64)
    for m in (ref, model):  # removing the wrapper leaves a plain module of the same kind
        unwrap(m[0])
        unwrap(m[2])
    assert type(model[0]) is tt.ConvTranspose3d and type(ref[0]) is torch.nn.ConvTranspose3d
    with torch.no_grad():
        _assert_close(model(x), ref(x), torch.float64)


def test_converted_parametrized_modules_deepcopy_and_refuse_pickling_like_torch():
    up = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose3d(4, 2, 2, 2))
    up = tt.convert(up)
    assert type(up).__name__ == "ParametrizedConvTranspose3d"
    twin = copy.deepcopy(up)
    assert type(twin) is type(up) and twin.parametrizations.weight.original0 is not \
        up.parametrizations.weight.original0
    x = torch.randn(1, 4, 3, 3, 3)
    with torch.no_grad():
        assert torch.equal(twin(x), up(x))
    with pytest.raises(RuntimeError, match="state_dict"):
        torch.save(up, io.BytesIO())
    # more parametrizations can be registered on the converted module
    torch.nn.utils.parametrize.register_parametrization(up, "bias", _Double())
    with torch.no_grad():
        y = up(x)
        up.parametrizations.bias.original.zero_()
        assert not torch.equal(up(x), y)


class _Double(torch.nn.Module):
    def forward(self, t):
        return 2 * t


def test_convert_reports_and_warns_about_what_it_skips():
    model = torch.nn.Sequential(
        torch.nn.ConvTranspose3d(2, 2, 2),
        _CustomConvTranspose(2, 2, 1),
        torch.nn.LazyConvTranspose3d(2, 1),
        torch.nn.utils.parametrizations.weight_norm(_CustomConvTranspose(2, 2, 1)),
        torch.nn.Conv3d(2, 2, 1))
    model.shared = model[0]  # one module under two names: converted once
    with pytest.warns(UserWarning) as record:
        model, report = tt.convert(model, report=True)
    assert report.converted == ("0",)
    assert list(report.skipped) == ["1", "2", "3"]
    assert "_CustomConvTranspose" in report.skipped["1"]
    assert "lazy" in report.skipped["2"]
    assert "parametrized _CustomConvTranspose" in report.skipped["3"]
    messages = [str(w.message) for w in record if "tconv3d" in str(w.message)]
    assert len(messages) == 3
    assert all(f"left '{name}' to PyTorch: {reason}" in message
               for message, (name, reason) in zip(messages, report.skipped.items()))
    assert "converted 1 module(s)" in str(report) and "skipped '2'" in str(report)
    assert type(model[1]) is _CustomConvTranspose and type(model[4]) is torch.nn.Conv3d
    # converting again changes nothing and reports the same skips
    with pytest.warns(UserWarning):
        again, report = tt.convert(model, report=True)
    assert again is model and report.converted == () and list(report.skipped) == ["1", "2", "3"]


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*is deprecated:FutureWarning")
def test_from_torch_refuses_computed_weights_and_warns_about_hooks():
    for module in (torch.nn.utils.spectral_norm(torch.nn.ConvTranspose3d(2, 2, 2)),
                   torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose3d(2, 2, 2))):
        with pytest.raises(TypeError, match="computed.*convert"):
            tt.ConvTranspose3d.from_torch(module)
    with pytest.raises(TypeError, match="torch.nn.ConvTranspose3d, got Conv3d"):
        tt.ConvTranspose3d.from_torch(torch.nn.Conv3d(2, 2, 1))
    module = torch.nn.ConvTranspose3d(2, 2, 2)
    module.register_forward_hook(lambda m, args, y: None)
    module.register_full_backward_pre_hook(lambda m, g: None)
    with pytest.warns(UserWarning, match="forward hooks, backward pre-hooks are not carried"):
        tt.ConvTranspose3d.from_torch(module)


# --------------------------------------------------------------------------------------
# hooks survive convert
# --------------------------------------------------------------------------------------
def _hooked(events):
    """A torch.nn.ConvTranspose3d with every kind of module hook, logging to ``events``."""
    torch.manual_seed(0)
    module = torch.nn.ConvTranspose3d(2, 3, 2, stride=2, dtype=torch.float64)

    def log(kind, value=None):
        events.append((kind, value if value is None else value.detach().clone()))

    handles = [
        module.register_forward_pre_hook(lambda m, args: (log("pre", args[0]), (2 * args[0],))[1]),
        module.register_forward_pre_hook(
            lambda m, args, kwargs: log("pre-kwargs", args[0]), with_kwargs=True),
        module.register_forward_hook(lambda m, args, y: (log("forward", y), y + 1)[1]),
        module.register_forward_hook(lambda m, args, kwargs, y: log("forward-kwargs", y),
                                     with_kwargs=True, always_call=True),
        module.register_full_backward_pre_hook(lambda m, g: (log("backward-pre", g[0]),
                                                             (3 * g[0],))[1]),
        module.register_full_backward_hook(lambda m, gi, go: log("backward", gi[0])),
        module.register_state_dict_pre_hook(lambda m, prefix, keep_vars: log("state-pre")),
        module.register_state_dict_post_hook(lambda m, state, prefix, meta: log("state")),
        module.register_load_state_dict_pre_hook(lambda m, *args: log("load-pre")),
        module.register_load_state_dict_post_hook(lambda m, keys: log("load")),
    ]
    return module, handles


def _exercise(module, x):
    x = x.detach().requires_grad_()
    module(x).sum().backward()
    module.load_state_dict(module.state_dict())
    return x.grad


def test_convert_keeps_every_kind_of_hook():
    # issue 18: hooks registered on the PyTorch module stopped firing after convert
    x = torch.randn(1, 2, 3, 4, 3, dtype=torch.float64)
    expected, got = [], []
    ref, _ = _hooked(expected)
    gx_ref = _exercise(ref, x)
    module, handles = _hooked(got)
    model = tt.convert(torch.nn.Sequential(module))
    assert model[0] is module and type(module) is tt.ConvTranspose3d
    gx = _exercise(module, x)
    assert [kind for kind, _ in got] == [kind for kind, _ in expected] == [
        "pre", "pre-kwargs", "forward", "forward-kwargs", "backward-pre", "backward",
        "state-pre", "state", "load-pre", "load"]
    for (kind, a), (_, e) in zip(got, expected):
        if e is not None:
            _assert_close(a, e, torch.float64)
    _assert_close(gx, gx_ref, torch.float64)  # the hooks' changes to values are applied
    for handle in handles:  # handles taken before convert still remove the hooks
        handle.remove()
    got.clear()
    _exercise(module, x)
    assert got == []


# --------------------------------------------------------------------------------------
# TorchScript and torch.compile
# --------------------------------------------------------------------------------------
def _small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.ConvTranspose3d(4, 2, 2, stride=2), torch.nn.ReLU())
    return model, tt.convert(copy.deepcopy(model))


def _save_load(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def test_jit_script_records_torch_op_and_saves():
    model, converted = _small_model()
    scripted = torch.jit.script(converted)
    assert type(converted[2]) is tt.ConvTranspose3d  # scripting leaves the eager model alone
    assert "aten::conv_transpose3d" in str(scripted.inlined_graph)
    x = torch.randn(1, 4, 5, 6, 7)
    with torch.no_grad():
        _assert_close(_save_load(scripted)(x), model(x), torch.float32)


def test_jit_trace_records_torch_op_with_a_warning():
    model, converted = _small_model()
    x = torch.randn(1, 4, 5, 6, 7)
    with pytest.warns(tt.TconvFallbackWarning, match="trace"):
        traced = torch.jit.trace(converted, x)
    graph = str(traced.inlined_graph)
    assert "prim::PythonOp" not in graph
    assert graph.count("aten::_convolution") == 2  # Conv3d and ConvTranspose3d (transposed=1)
    with torch.no_grad():
        _assert_close(_save_load(traced)(x), model(x), torch.float32)


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_records_torch_op(strict):
    model, converted = _small_model()
    x = torch.randn(1, 4, 5, 6, 7)
    program = torch.export.export(converted, (x,), strict=strict)
    targets = [str(node.target) for node in program.graph.nodes]
    assert "aten.conv_transpose3d.input" in targets
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    with torch.no_grad():
        _assert_close(torch.export.load(buffer).module()(x), model(x), torch.float32)


def test_torch_compile_breaks_the_graph_around_tconv3d(monkeypatch):
    calls, graphs = [], []

    def spy(*args, **kwargs):
        calls.append(1)
        return tconv3d.conv_transpose3d(*args, **kwargs)

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(autograd_impl, "_tconv_forward", spy)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyUNet()
    converted = tt.convert(copy.deepcopy(model))
    compiled = torch.compile(converted, backend=backend)
    x = torch.randn(2, 1, 8, 8, 8)
    results = []
    for module in (model, compiled):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.square().mean().backward()
        results.append((y.detach(), xi.grad, [p.grad for p in module.parameters()]))
    assert len(calls) == 2  # tconv3d ran both up-convolutions, outside the graphs ...
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes]
    assert not any("conv_transpose" in t for t in targets)
    # ... and Dynamo compiled the other layers: all 7 Conv3d, in graphs split around them
    assert len(graphs) >= 3
    assert sum("conv3d" in t for t in targets) == 7
    (y_ref, gx_ref, gp_ref), (y, gx, gp) = results
    _assert_close(y, y_ref, torch.float32)
    _assert_close(gx, gx_ref, torch.float32)
    for a, e in zip(gp, gp_ref):
        _assert_close(a, e, torch.float32)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch.compiler.disable"):
        torch.compile(converted, backend=backend, fullgraph=True)(x)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------
# packaging: torch stays optional, and this module does not shadow it
# --------------------------------------------------------------------------------------
def test_import_tconv3d_does_not_import_torch(run_python):
    result = run_python("-c", "import sys, tconv3d; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_import_without_torch_names_the_extra(run_python):
    result = run_python("-c", "import sys; sys.modules['torch'] = None; import tconv3d.torch")
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "tconv3d[torch]" in result.stderr


def test_dropin_example_runs(capsys):
    import runpy
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "torch_dropin.py"
    difference = runpy.run_path(str(path))["main"](side=4)
    assert difference < 1e-5
    assert "tconv3d.torch.ConvTranspose3d" in capsys.readouterr().out


def test_module_named_torch_does_not_shadow_pytorch(run_python):
    assert tt.torch is torch and tt.torch.__name__ == "torch"
    result = run_python("-c", "import tconv3d.torch, torch; "
                     "print(torch.__name__, hasattr(torch, 'nn'), tconv3d.torch.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch", "True", "tconv3d.torch"]


# --------------------------------------------------------------------------------------
# autocast, and non-finite weights at cropped borders
# --------------------------------------------------------------------------------------
def test_infinite_weight_at_a_cropped_border_gives_exact_gradients():
    """PyTorch's input gradient multiplies the cropped (padding) positions' zeros by an
    infinite tap and gets NaN there; tconv3d never touches cropped positions, so its
    gradient holds only the infinities the definition gives (pinned difference)."""
    torch.manual_seed(0)
    stock = torch.nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        stock.weight[0, 0, 0, 0, 0] = float("inf")
    ours = tt.ConvTranspose3d(2, 3, 3, stride=2, padding=1).double()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    grads = {}
    for name, module in (("torch", stock), ("tconv3d", ours)):
        y = module(x)
        grads[name], = torch.autograd.grad(y.sum(), x)
    assert torch.isnan(grads["torch"]).sum() > 0
    assert torch.isnan(grads["tconv3d"]).sum() == 0
    finite = torch.isfinite(grads["torch"])
    assert torch.equal(torch.isinf(grads["tconv3d"]), torch.isinf(grads["torch"]))
    torch.testing.assert_close(grads["tconv3d"][finite], grads["torch"][finite])
