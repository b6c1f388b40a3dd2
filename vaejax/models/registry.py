"""Models by name: ``create_model(config, spec)`` builds a Linen module for a dataset.

``spec`` is the dataset's :class:`vaejax.types.DataSpec` (``dataset.spec``: images, or
token sequences); the older form ``create_model(config, image_shape, num_classes)`` builds
image models as before. A model built for one family refuses the other (an image model on
token sequences and the reverse), before anything is compiled.

A model config is a Mapping or ``ml_collections.ConfigDict`` with ``name`` and any of the
keys of :data:`COMMON_DEFAULTS` (plus keys a registered model declares). Every key any
registered model knows is accepted for every model, so one experiment config can switch
``name`` from the command line; keys a model does not use are validated and ignored.
Unknown names, unknown keys and bad values raise one ValueError each, before anything is
compiled.

A new model registers a builder ``(config: dict, image_shape, num_classes) -> nn.Module``,
declaring the defaults of any extra keys it reads::

    @register("my_vae", num_levels=3)
    def _build(config, image_shape, num_classes): ...

A model of token sequences registers with ``data_kind=TOKENS`` and its builder takes
``(config: dict, spec: DataSpec)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vaejax.models import fast_conv, networks, vae
from vaejax.types import IMAGES, DataSpec

Builder = Callable[[dict, tuple[int, int, int], "int | None"], nn.Module]

COMMON_DEFAULTS: dict[str, Any] = {
    "latent_dim": 10,
    "hidden_sizes": (512, 256),
    "likelihood": "bernoulli",
    "likelihood_variance": 1.0,
    "min_variance": None,
    "posterior_min_variance": 0.0,
    "conv_impl": "fast",
    "dtype": "float32",
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ModelEntry(NamedTuple):
  builder: Builder
  defaults: dict[str, Any]
  data_kind: str = IMAGES  # the DataSpec kind the model is built for


MODELS: dict[str, ModelEntry] = {}


def register(name: str, *, data_kind: str = IMAGES, **defaults: Any
             ) -> Callable[[Builder], Builder]:
  """Decorator registering ``builder`` under ``name``, for data of ``data_kind`` (a
  :class:`~vaejax.types.DataSpec` kind), with defaults for its extra keys."""
  def decorator(builder: Builder) -> Builder:
    if name in MODELS:
      raise ValueError(f"A model named {name!r} is already registered.")
    MODELS[name] = ModelEntry(builder, dict(defaults), data_kind)
    return builder
  return decorator


def _known_keys() -> set[str]:
  keys = set(COMMON_DEFAULTS) | {"name"}
  for entry in MODELS.values():
    keys |= set(entry.defaults)
  return keys


def _as_dict(model_config: Any) -> dict[str, Any]:
  if hasattr(model_config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    return dict(model_config.to_dict())
  if isinstance(model_config, Mapping):
    return dict(model_config)
  raise ValueError(
      f"model_config must be a Mapping or ConfigDict, got {type(model_config).__name__}."
  )


def int_tuple(values: Any, name: str) -> tuple[int, ...]:
  """A sequence (or 1-D array) of positive integers as a tuple of Python ints."""
  if isinstance(values, np.ndarray) and values.ndim == 1:
    values = values.tolist()
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or any(
      isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values
  ):
    raise ValueError(f"{name} must be a sequence of positive ints, got {values!r}.")
  return tuple(int(v) for v in values)


def validate_config(config: dict[str, Any]) -> None:
  """Checks the values of the common keys; raises one ValueError naming the bad one."""
  latent_dim = config["latent_dim"]
  if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
    raise ValueError(f"latent_dim must be an int >= 1, got {latent_dim!r}.")
  int_tuple(config["hidden_sizes"], "hidden_sizes")
  vae.check_distribution_settings(config)
  fast_conv.check_conv_impl(config["conv_impl"])
  if config["dtype"] not in DTYPES:
    raise ValueError(f"Unknown dtype {config['dtype']!r}; expected one of {tuple(DTYPES)}.")


def create_model(
    model_config: Mapping[str, Any] | Any,
    image_shape: DataSpec | Sequence[int],
    num_classes: int | None = None,
) -> nn.Module:
  """Builds the registered model ``model_config["name"]`` for the data ``spec`` describes.

  Args:
    model_config: Mapping or ConfigDict with ``name`` and optional keys (defaults in
      :data:`COMMON_DEFAULTS`): ``latent_dim``, ``hidden_sizes`` (MLP encoder; the decoder
      mirrors it), ``likelihood``, ``likelihood_variance``, ``min_variance``,
      ``posterior_min_variance`` (smooth floor on the encoder's variances, 0 = off; see
      :func:`vaejax.distributions.soft_floor_log_var`),
      ``conv_impl`` ("fast" | "fast_lax" | "textbook", see :mod:`vaejax.models.fast_conv`),
      ``dtype`` ("float32" | "bfloat16").
      Text models (``lstm_vae``, ``lstm_lm``: :mod:`vaejax.models.sequence`) read
      ``embedding_size``, ``hidden_size``, ``word_keep`` too.
    image_shape: the dataset's :class:`~vaejax.types.DataSpec` (``dataset.spec``), or
      (H, W, C) of image data (the older form).
    num_classes: with an image shape: number of label classes; required by conditional
      models, ignored by the others. Part of the spec otherwise.

  Returns:
    An unbound Linen module; ``module.init({"params": k1, "sample": k2}, x, labels)``
    (x and labels from :func:`vaejax.types.example_batch`).

  Raises:
    ValueError: unknown name or key, a bad value, or a model of the other data family,
      naming it and what is allowed.

  >>> import jax
  >>> model = create_model({"name": "mlp_vae", "latent_dim": 2, "hidden_sizes": (8,)},
  ...                      (4, 4, 1))  # 4×4 one-channel images
  >>> x = jnp.zeros((3, 4, 4, 1))
  >>> keys = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  >>> # model.init / model.apply give the values; jax.eval_shape the same shapes, at once.
  >>> variables = jax.eval_shape(model.init, keys, x)
  >>> sum(p.size for p in jax.tree.leaves(variables["params"]))
  340
  >>> outputs = jax.eval_shape(
  ...     lambda v: model.apply(v, x, rngs={"sample": jax.random.key(2)}), variables)
  >>> outputs.mean.shape, outputs.z.shape, outputs.likelihood["logits"].shape
  ((3, 2), (3, 2), (3, 4, 4, 1))
  >>> create_model({"name": "mlp_vea"}, (4, 4, 1))
  Traceback (most recent call last):
  ...
  ValueError: Unknown model name 'mlp_vea'; registered models: [...].
  """
  config = _as_dict(model_config)
  name = config.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"Unknown model name {name!r}; registered models: {sorted(MODELS)}.")
  unknown = sorted(set(config) - _known_keys())
  if unknown:
    raise ValueError(
        f"Unknown model config key(s) {unknown} for model {name!r}; allowed keys: "
        f"{sorted(_known_keys())}."
    )
  entry = MODELS[name]
  resolved = {**COMMON_DEFAULTS, **entry.defaults, **config}
  validate_config(resolved)
  resolved["hidden_sizes"] = int_tuple(resolved["hidden_sizes"], "hidden_sizes")
  spec = _check_spec(name, entry.data_kind, image_shape, num_classes)
  if entry.data_kind != IMAGES:
    return entry.builder(resolved, spec)
  image_shape, num_classes = spec.image_shape, spec.num_classes
  shape = int_tuple(image_shape, "image_shape")
  if len(shape) != 3:
    raise ValueError(f"image_shape must be (height, width, channels), got {image_shape!r}.")
  if num_classes is not None and (
      isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
  ):
    raise ValueError(f"num_classes must be an int >= 1 or None, got {num_classes!r}.")
  return entry.builder(resolved, shape, num_classes)


def _check_spec(name: str, kind: str, spec: Any, num_classes: Any) -> DataSpec:
  """The data spec (old-form image shapes wrapped), or an error if ``name`` cannot model it."""
  if not isinstance(spec, DataSpec):
    return _check_spec(name, kind, DataSpec(IMAGES, spec, num_classes), None)
  if num_classes is not None:
    raise ValueError("Pass num_classes inside the DataSpec, not next to it.")
  if spec.kind != kind:
    fits = sorted(n for n, e in MODELS.items() if e.data_kind == spec.kind)
    raise ValueError(
        f"Model {name!r} is built for {kind} but the dataset describes {spec.describe()}; "
        f"models for {spec.kind}: {fits}.")
  return spec


# ----------------------------------------------------------------------------- built-in models


def _vae(config: dict, image_shape: tuple[int, int, int], encoder: nn.Module,
         decoder: nn.Module, num_classes: int = 0) -> vae.VAE:
  return vae.VAE(
      encoder=encoder, decoder=decoder, image_shape=image_shape,
      likelihood=config["likelihood"],
      likelihood_variance=float(config["likelihood_variance"]),
      min_variance=None if config["min_variance"] is None else float(config["min_variance"]),
      num_classes=num_classes,
      posterior_min_variance=float(config["posterior_min_variance"]),
  )


def _mlp(config, image_shape, num_classes=0) -> vae.VAE:
  dtype = DTYPES[config["dtype"]]
  channels = vae.decoder_channels(config["likelihood"], image_shape[-1])
  encoder = networks.MLPEncoder(config["latent_dim"], config["hidden_sizes"], dtype=dtype)
  decoder = networks.MLPDecoder(
      image_shape[:2] + (channels,), tuple(reversed(config["hidden_sizes"])), dtype=dtype
  )
  return _vae(config, image_shape, encoder, decoder, num_classes)


def _conv(config, image_shape, num_classes=0) -> vae.VAE:
  height, width, _ = image_shape
  if height % 16 or width % 16:
    raise ValueError(
        f"Conv models need image height and width that are multiples of 16 (e.g. 64×64 "
        f"dSprites); got {height}×{width}. Use an MLP model (e.g. 'mlp_vae') for 28×28 MNIST."
    )
  dtype = DTYPES[config["dtype"]]
  channels = vae.decoder_channels(config["likelihood"], image_shape[-1])
  encoder = networks.ConvEncoder(
      config["latent_dim"], conv_impl=config["conv_impl"], dtype=dtype
  )
  decoder = networks.ConvDecoder(
      image_shape[:2] + (channels,), conv_impl=config["conv_impl"], dtype=dtype
  )
  return _vae(config, image_shape, encoder, decoder, num_classes)


def _need_classes(name: str, num_classes: int | None) -> int:
  if num_classes is None:
    raise ValueError(
        f"{name!r} is a conditional model: pass num_classes (the number of label classes)."
    )
  return num_classes


@register("mlp_vae")
def _build_mlp_vae(config, image_shape, num_classes):
  del num_classes  # unconditional
  return _mlp(config, image_shape)


@register("conv_vae")
def _build_conv_vae(config, image_shape, num_classes):
  del num_classes
  return _conv(config, image_shape)


@register("mlp_cvae")
def _build_mlp_cvae(config, image_shape, num_classes):
  return _mlp(config, image_shape, _need_classes("mlp_cvae", num_classes))


@register("conv_cvae")
def _build_conv_cvae(config, image_shape, num_classes):
  return _conv(config, image_shape, _need_classes("conv_cvae", num_classes))
