"""The fast conv formulations equal the textbook ones, which equal flax's own layers."""

import functools

import chex
import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vaejax.models import fast_conv, networks

FAST_IMPLS = ("fast", "fast_lax")
# float32 sums of up to a few thousand products, in different orders.
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def random_params(module, *args):
  """Random parameters of ``module`` without running (and compiling) its init."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rng = np.random.default_rng(0)

  def draw(leaf):
    scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

  return jax.tree.map(draw, shapes)


def _fn(transposed, impl):
  table = fast_conv._CONV_TRANSPOSE_FNS if transposed else fast_conv._CONV_FNS
  return table[impl]


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _values_and_grads(transposed, impls, x, kernel, strides):
  """Per impl: the output and the gradients of <output, fixed cotangent> w.r.t. (x, kernel).

  One jit for all impls: compiling once is much cheaper than op-by-op dispatch.
  """
  def value_and_grads(fn):
    y = fn(x, kernel, strides)
    cotangent = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    grads = jax.grad(lambda a, k: jnp.sum(fn(a, k, strides) * cotangent), argnums=(0, 1))(
        x, kernel)
    return y, grads

  return [value_and_grads(_fn(transposed, impl)) for impl in impls]


# ----------------------------------------------------------------------------- reshapes


def test_space_to_depth_known_answer_and_inverse():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  y = fast_conv.space_to_depth(x, (2, 3))
  chex.assert_shape(y, (2, 2, 2, 18))
  # Block (0, 1) of image 1 holds rows 0-1, columns 3-5, channels ordered (row, col, c).
  expected = np.asarray(x)[1, 0:2, 3:6, :].reshape(-1)
  np.testing.assert_array_equal(np.asarray(y[1, 0, 1]), expected)
  np.testing.assert_array_equal(np.asarray(fast_conv.depth_to_space(y, (2, 3))), np.asarray(x))


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (64, 4, 2, (1, 1)), (16, 2, 2, (0, 0)), (7, 3, 2, (1, 1)), (8, 3, 2, (0, 1)),
    (5, 1, 2, (0, 0)), (10, 5, 3, (2, 2)), (11, 5, 3, (1, 2)),
])
def test_same_padding_matches_xla(size, kernel, stride, expected):
  assert fast_conv.same_padding(size, kernel, stride) == expected
  assert tuple(lax.padtype_to_pads((size,), (kernel,), (stride,), "SAME")[0]) == expected


# ----------------------------------------------------------------------------- single layers

# (kernel (kh, kw), strides, input (h, w), cin, cout): the dSprites layers, odd sizes,
# kernels smaller than / equal to / not divisible by the stride, both matmul orders
# (cin <= cout gathers, cin > cout scatters), and stride 1.
LAYER_CASES = [
    ((4, 4), (2, 2), (16, 16), 1, 8),
    ((4, 4), (2, 2), (9, 9), 8, 3),
    ((2, 2), (2, 2), (8, 8), 4, 6),
    ((3, 3), (2, 2), (7, 10), 3, 5),
    ((5, 3), (3, 2), (8, 7), 6, 2),
    ((1, 1), (2, 2), (5, 6), 2, 4),
    ((3, 3), (1, 1), (6, 6), 2, 3),
]


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("kernel_shape,strides,hw,cin,cout", LAYER_CASES)
def test_fast_equals_textbook_values_and_grads(transposed, kernel_shape, strides, hw, cin,
                                               cout):
  x = _normal(0, (2,) + hw + (cin,))
  kernel = _normal(1, kernel_shape + (cin, cout))
  expected, *fast = _values_and_grads(transposed, ("textbook",) + FAST_IMPLS, x, kernel,
                                      strides)
  out_hw = (hw[0] * strides[0], hw[1] * strides[1]) if transposed else (
      -(-hw[0] // strides[0]), -(-hw[1] // strides[1]))
  chex.assert_shape(expected[0], (2,) + out_hw + (cout,))
  for result in fast:
    chex.assert_trees_all_close(result, expected, **TOL)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    channels=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    transposed=st.booleans(),
)
def test_fast_equals_textbook_for_all_shapes(kernel, strides, hw, channels, transposed):
  x = _normal(2, (1,) + hw + (channels[0],))
  w = _normal(3, kernel + channels)
  expected, fast = _values_and_grads(transposed, ("textbook", "fast"), x, w, strides)
  chex.assert_trees_all_close(fast, expected, **TOL)


def _reference_conv_transpose_same(x, w, strides):
  """The documented "SAME" semantics, by loops: y_o = Σ_t x̃_{o+t−a} w_t, output s·L."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  b, h, wd, _ = x.shape
  kh, kw, _, cout = w.shape
  (sh, sw), (ah, aw) = strides, (fast_conv.transpose_same_offset(kh, strides[0]),
                                 fast_conv.transpose_same_offset(kw, strides[1]))
  y = np.zeros((b, h * sh, wd * sw, cout))
  for oh in range(h * sh):
    for ow in range(wd * sw):
      for th in range(kh):
        for tw in range(kw):
          jh, jw = oh + th - ah, ow + tw - aw  # index into the stride-dilated input
          if jh % sh == 0 and jw % sw == 0 and 0 <= jh // sh < h and 0 <= jw // sw < wd:
            y[:, oh, ow] += x[:, jh // sh, jw // sw] @ w[th, tw]
  return y


@pytest.mark.parametrize("kernel,strides", [((4, 4), (2, 2)), ((3, 2), (2, 3)), ((1, 1), (2, 2))])
def test_conv_transpose_same_semantics_documented(kernel, strides):
  x, w = _normal(4, (1, 3, 4, 2)), _normal(5, kernel + (2, 3))
  expected = _reference_conv_transpose_same(x, w, strides)
  for impl in ("textbook", "fast"):
    np.testing.assert_allclose(_fn(True, impl)(x, w, strides), expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_is_tf_conv2d_transpose_with_flipped_kernel():
  """k=4, s=2: equals the adjoint of a "SAME" strided conv (TF's conv2d_transpose)."""
  x, w = _normal(6, (2, 5, 5, 3)), _normal(7, (4, 4, 3, 2))  # w: (kh, kw, Cin, Cout)
  # TF's filter for conv2d_transpose is the forward conv's HWIO kernel, which maps the
  # Cout-channel output space back to Cin channels: flip spatially, swap channel axes.
  forward_kernel = jnp.flip(w, axis=(0, 1)).transpose(0, 1, 3, 2)
  _, adjoint = jax.vjp(lambda y: fast_conv.conv2d_textbook(y, forward_kernel, (2, 2)),
                       jnp.zeros((2, 10, 10, 2)))
  chex.assert_trees_all_close(fast_conv.conv_transpose2d_fast(x, w, (2, 2)), adjoint(x)[0],
                              **TOL)


# ----------------------------------------------------------------------------- flax parity


@pytest.mark.parametrize("kernel,strides,hw", [(4, 2, (9, 8)), (2, 2, (8, 8)), (3, 1, (5, 5))])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_layers_equal_flax_layers_with_the_same_params(kernel, strides, hw, transposed):
  x = _normal(8, (2,) + hw + (3,))
  ours, theirs = (
      (fast_conv.ConvTranspose2D, nn.ConvTranspose) if transposed else (fast_conv.Conv2D, nn.Conv))
  flax_layer = theirs(4, (kernel, kernel), strides=(strides, strides), padding="SAME")
  variables = random_params(flax_layer, x)  # with a non-zero bias
  layers = [ours(4, kernel, strides=strides, conv_impl=impl) for impl in fast_conv.CONV_IMPLS]
  for layer in layers:  # the same parameter pytree: names, shapes, dtypes
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(layer.init, jax.random.key(0), x), variables)
  outputs = jax.jit(lambda v, a: [m.apply(v, a) for m in [flax_layer] + layers])(variables, x)
  for output in outputs[1:]:
    chex.assert_trees_all_close(output, outputs[0], **TOL)


def test_layer_param_dtype_and_compute_dtype():
  for cls in (fast_conv.Conv2D, fast_conv.ConvTranspose2D):
    layer = cls(4, 4, strides=2, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32)
    variables = jax.eval_shape(layer.init, jax.random.key(0), x)  # shapes only, no compile
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs,match", [
    ({"conv_impl": "winograd"}, "conv_impl"),
    ({"kernel_size": 0}, "kernel_size"),
    ({"strides": (2, 2, 2)}, "strides"),
    ({"features": 0}, "features"),
])
def test_layer_bad_attributes_raise_at_construction(kwargs, match):
  args = {"features": 4, "kernel_size": 3} | kwargs
  with pytest.raises(ValueError, match=match):
    fast_conv.Conv2D(**args)


def test_layer_rejects_non_nhwc_input():
  with pytest.raises(ValueError, match="NHWC"):
    fast_conv.Conv2D(4, 3).init(jax.random.key(0), jnp.zeros((8, 8, 1)))


# ----------------------------------------------------------------------------- whole networks


@functools.partial(jax.jit, static_argnums=0)
def _apply_and_grads(net, params, inputs):
  def f(p, a):
    out = net.apply({"params": p}, a)
    leaves = jax.tree.leaves(out)
    # A fixed, non-symmetric weighting so every output element matters.
    return sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape))) for o in leaves)
  return net.apply({"params": params}, inputs), jax.grad(f, argnums=(0, 1))(params, inputs)


@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_dsprites_networks_fast_equals_textbook(which):
  """The real 64×64 disentanglement_lib nets: same outputs and grads (params and inputs)."""
  if which == "encoder":
    inputs = jnp.asarray(np.random.default_rng(10).random((2, 64, 64, 1)) < 0.2, jnp.float32)
  else:
    inputs = _normal(11, (2, 10))

  def make(impl):
    if which == "encoder":
      return networks.ConvEncoder(10, conv_impl=impl)
    return networks.ConvDecoder((64, 64, 1), conv_impl=impl)
  params = random_params(make("textbook"), inputs)["params"]
  expected = _apply_and_grads(make("textbook"), params, inputs)
  # "fast_lax" differs from "fast" only in the stride-1 conv, checked layer by layer above.
  chex.assert_trees_all_close(_apply_and_grads(make("fast"), params, inputs), expected,
                              rtol=1e-4, atol=2e-5)
