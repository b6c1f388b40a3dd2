r"""One trained model, loaded (:func:`vaejax.load_run`): encode, decode, sample and score.

A :class:`Run` holds what identifies the model (``config``, ``point``, ``step``,
``index``) and its parameters (``params``, host arrays); the Flax module (``model``) and
the dataset it was trained on (``dataset``) are built on first use. Its methods take
batches (the first axis), check their inputs before anything compiles, and return host
numpy arrays. Each compiles once per model and input shape: they call the jit-compiled
functions of :mod:`vaejax.models.codec` and of this module, whose cache is keyed by the
(hashable) module, so every :class:`Run` of one architecture shares the programs.

* :meth:`Run.encode`, :meth:`~Run.decode`, :meth:`~Run.reconstruct`,
  :meth:`~Run.traverse`, :meth:`~Run.sample`: :mod:`vaejax.models.codec`;
* :meth:`Run.elbo`: one-sample ELBO per example, ``objectives.elbo_terms`` of
  :func:`vaejax.models.codec.forward`, as the ``elbo`` evaluator computes it (with
  :meth:`Run.eval_key` and :meth:`Run.held_out` it reproduces the logged ``eval/elbo``);
* :meth:`Run.iwae`: :math:`\log \hat p_K(x)` per example,
  :func:`vaejax.evaluation.likelihood.iwae_log_likelihood`, as the ``iwae`` evaluator.

A text run (``lstm_vae``, ``lstm_lm``: examples are token sequences, ``(B, T)`` int ids
of the run's vocabulary, as the dataset's ``tokens`` batches) loads the same way;
:meth:`Run._inputs` checks what one example looks like. :meth:`Run.encode`,
:meth:`~Run.elbo` and :meth:`~Run.iwae` take token batches; the methods that decode to
images (:meth:`~Run.decode`, :meth:`~Run.reconstruct`, :meth:`~Run.sample`,
:meth:`~Run.traverse`) refuse a text run (its decoding is
:mod:`vaejax.evaluation.text`'s, on ``run.model`` and ``run.params``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from vaejax import data as data_lib
from vaejax import distributions, objectives, rng
from vaejax.evaluation import likelihood
from vaejax.evaluation.evaluators import held_out_batches
from vaejax.models import codec
from vaejax.sweeps.grid import point_label
from vaejax.training.plan import build_model, data_spec
from vaejax.types import TOKENS
from vaejax.utils.checks import check_int, check_number

__all__ = ["Decoded", "Posterior", "Run"]

Array = jax.Array


class Posterior(NamedTuple):
  r""":math:`q(z \mid x)`: ``mean`` and ``log_var``, each ``(B, d)``."""

  mean: np.ndarray
  log_var: np.ndarray


class Decoded(NamedTuple):
  r""":math:`p(x \mid z)`: ``likelihood``, its parameters (``{"logits"}`` for Bernoulli,
  ``{"mean", "log_var"}`` for Gaussians), and ``mean``, :math:`\mathbb{E}[x \mid z]`."""

  likelihood: dict[str, np.ndarray]
  mean: np.ndarray


@functools.partial(jax.jit, static_argnums=0)
def _elbo(model: Any, params: Any, x: Array, key: Array, labels: Array | None) -> Array:
  return objectives.elbo_terms(x, codec.forward(model, params, x, key, labels))["elbo"]


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "chunk_size"))
def _iwae(model: Any, params: Any, x: Array, key: Array, labels: Array | None, *,
          num_samples: int, chunk_size: int) -> Array:
  def sample_outputs(k):
    return codec.forward(model, params, x, k, labels)
  return likelihood.iwae_log_likelihood(sample_outputs, x, key, num_samples, chunk_size)


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Run:
  """One trained model of a run or sweep (read-only; :func:`vaejax.load_run` makes it).

  Attributes:
    workdir: the run's directory.
    config: the model's training config: the run's, with its grid point applied (frozen:
      ``ml_collections.ConfigDict(run.config)`` is an editable copy).
    params: its parameters (host numpy arrays).
    point: its grid values (``{}`` for a single run).
    step: the step of the checkpoint it was read from.
    index: its index among the run's models (``model`` in ``metrics.jsonl``).
    num_models: how many models the run has.
    given_dataset: the dataset passed to ``load_run`` (None: loaded from ``config.data``).
    source: the checkpoint directory it was read from.
  """

  workdir: Path
  config: ml_collections.FrozenConfigDict
  params: Any
  point: dict[str, Any]
  step: int
  index: int
  num_models: int
  given_dataset: Any
  source: Path

  def __repr__(self) -> str:
    which = (f"model {self.index} of {self.num_models} ({point_label(self.point)}), "
             if self.num_models > 1 else "")
    return f"Run({self.workdir}, {which}step {self.step}, {self.config.model.name})"

  # --------------------------------------------------------------------------- built on use

  @functools.cached_property
  def dataset(self) -> Any:
    """The dataset the model was trained on (loaded on first use)."""
    if self.given_dataset is not None:
      return self.given_dataset
    return data_lib.load(self.config.data)

  @functools.cached_property
  def model(self) -> Any:
    """The Flax module, built as training built it, checked against ``params``."""
    model, _ = build_model(self.config, self.dataset)
    _check_params_fit(model, self.params, self.example_shape, self.source)
    return model

  @functools.cached_property
  def _device_params(self) -> Any:
    return jax.device_put(self.params)  # once, not per call

  @property
  def seed(self) -> int:
    return int(self.config.seed)

  @property
  def example_shape(self) -> tuple[int, ...]:
    """The shape of one example (the model is built for it): ``(H, W, C)``, or ``(T,)``
    token ids for a text run."""
    spec = data_spec(self.dataset)
    return (spec.max_length,) if spec.kind == TOKENS else tuple(spec.image_shape)

  @property
  def is_text(self) -> bool:
    """Whether the run's examples are token sequences."""
    return data_spec(self.dataset).kind == TOKENS

  @property
  def latent_dim(self) -> int:
    return int(self.model.latent_dim)

  @property
  def conditional(self) -> bool:
    return codec.is_conditional(self.model)

  @functools.cached_property
  def _held_out(self) -> list[dict[str, Any]]:
    return held_out_batches(self.dataset, self.config.eval)

  def held_out(self) -> list[dict[str, Any]]:
    """The fixed held-out batches every evaluator of the run scores (host arrays)."""
    return self._held_out

  def eval_key(self, index: int) -> Array:
    """The key the ``elbo`` evaluator samples held-out batch ``index`` with:
    ``fold_in(stream_key(seed, EVAL_SAMPLE), index)`` (:mod:`vaejax.rng`)."""
    index = check_int(index, "index", minimum=0)
    return jax.random.fold_in(rng.stream_key(self.seed, rng.EVAL_SAMPLE), index)

  # --------------------------------------------------------------------------- the methods

  def encode(self, x: Any, labels: Any = None) -> Posterior:
    """:math:`q(z \\mid x[, y])` of a batch ``x``: ``(mean, log_var)``, each ``(B, d)``."""
    x, labels = self._inputs(x, labels)
    return Posterior(*jax.device_get(codec.encode(self.model, self._device_params, x,
                                                  labels)))

  def decode(self, z: Any, labels: Any = None) -> Decoded:
    """:math:`p(x \\mid z[, y])` of codes ``z`` ``(B, d)``: its parameters and its mean."""
    self._images_only("decode")
    z = self._codes(z)
    labels = self._labels(labels, z.shape[0])
    likelihood_params = codec.decode(self.model, self._device_params, z, labels)
    return Decoded(jax.device_get(likelihood_params),
                   np.asarray(distributions.likelihood_mean(likelihood_params)))

  def reconstruct(self, x: Any, labels: Any = None) -> np.ndarray:
    """The decoder mean at the posterior mean, ``(B, ...)`` like ``x``."""
    self._images_only("reconstruct")
    x, labels = self._inputs(x, labels)
    mean, _ = codec.encode(self.model, self._device_params, x, labels)
    return np.asarray(codec.decode_mean(self.model, self._device_params, mean, labels))

  def sample(self, num: int, key: Array, temperature: float = 1.0,
             labels: Any = None) -> np.ndarray:
    """Decoder means of ``num`` draws from the prior, ``(num, ...)``: ancestral for a
    hierarchical model, every level's prior scale times ``temperature`` (z = T·ε for a
    flat one); ``labels`` ``(num,)`` for a conditional model."""
    self._images_only("sample")
    num = check_int(num, "num", minimum=1)
    temperature = check_number(temperature, "temperature", minimum=0.0)
    labels = self._labels(labels, num)
    return np.asarray(codec.prior_samples(self.model, self._device_params, key, num, labels,
                                          temperature))

  def elbo(self, x: Any, key: Array, labels: Any = None) -> np.ndarray:
    """The ELBO of each example, ``(B,)`` nats, from one posterior sample drawn with
    ``key``: log p(x|z) − KL, the estimate the ``elbo`` evaluator averages."""
    x, labels = self._inputs(x, labels)
    return np.asarray(_elbo(self.model, self._device_params, x, key, labels))

  def iwae(self, x: Any, num_samples: int, key: Array, labels: Any = None,
           chunk_size: int | None = None) -> np.ndarray:
    r""":math:`\log \hat p_K(x)` of each example, ``(B,)`` nats (K = ``num_samples``): a
    lower bound on log p(x) that tightens with K. ``chunk_size`` samples are drawn at once
    (default: the run's ``evals.iwae.chunk_size``, so that the ``iwae`` evaluator's key
    gives the evaluator's samples)."""
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    chunk = self.config.evals.iwae.chunk_size if chunk_size is None else chunk_size
    chunk = check_int(chunk, "chunk_size", minimum=1)
    x, labels = self._inputs(x, labels)
    return np.asarray(_iwae(self.model, self._device_params, x, key, labels,
                            num_samples=num_samples, chunk_size=chunk))

  def traverse(self, x: Any, dim: int, values: Any, labels: Any = None) -> np.ndarray:
    """Decoder means along latent axis ``dim``: ``(B, V, ...)``, input b's posterior mean
    with coordinate ``dim`` set to each of ``values`` (V,)."""
    self._images_only("traverse")
    dim = check_int(dim, f"dim (a latent axis of {self.latent_dim})", minimum=0,
                    maximum=self.latent_dim - 1)
    values = np.asarray(values, np.float32)
    if values.ndim != 1 or not values.size or not np.isfinite(values).all():
      raise ValueError(f"values must be a 1-D sequence of finite numbers; got {values!r}.")
    x, labels = self._inputs(x, labels)
    return np.asarray(codec.traverse(self.model, self._device_params, x, dim, values, labels))

  # --------------------------------------------------------------------------- input checks

  def _images_only(self, method: str) -> None:
    if self.is_text:
      raise ValueError(f"Run.{method} decodes images; model {self.config.model.name!r} "
                       "decodes token sequences (vaejax.evaluation.text: reconstructions, "
                       "prior_samples, homotopy on run.model and run.params).")

  def _inputs(self, x: Any, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch of examples (and labels), checked: what one example looks like lives here."""
    if self.is_text:
      return self._tokens(x), self._labels(labels, np.shape(x)[0])
    x = np.asarray(x, np.float32)
    shape = self.example_shape
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape or x.shape[0] == 0:
      raise ValueError(f"x has shape {x.shape}; model {self.config.model.name!r} takes a "
                       f"batch (B >= 1, {', '.join(map(str, shape))}).")
    if not np.isfinite(x).all():
      raise ValueError("x has non-finite values (NaN or inf).")
    return x, self._labels(labels, x.shape[0])

  def _tokens(self, x: Any) -> np.ndarray:
    """A batch of token sequences: ``(B, T)`` int ids of the run's vocabulary."""
    x = np.asarray(x)
    length, vocab = self.example_shape[0], data_spec(self.dataset).vocab_size
    if (x.ndim != 2 or x.shape[1] != length or x.shape[0] == 0
        or not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() >= vocab):
      raise ValueError(f"x has shape {x.shape} and dtype {x.dtype}; model "
                       f"{self.config.model.name!r} takes a batch (B >= 1, {length}) of int "
                       f"token ids in [0, {vocab}) (the dataset's batch['tokens']).")
    return x.astype(np.int32)

  def _labels(self, labels: Any, batch: int) -> np.ndarray | None:
    name = self.config.model.name
    if not self.conditional:
      if labels is not None:
        raise ValueError(f"Model {name!r} is unconditional: it takes no labels.")
      return None
    classes = self.model.num_classes
    if labels is None:
      raise ValueError(f"Model {name!r} is conditional: pass labels=, ({batch},) int class "
                       f"ids in [0, {classes}).")
    labels = np.asarray(labels)
    if (labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0 or labels.max() >= classes):
      raise ValueError(f"labels must be ({batch},) int class ids in [0, {classes}); got "
                       f"shape {labels.shape}, dtype {labels.dtype}.")
    return labels.astype(np.int32)

  def _codes(self, z: Any) -> np.ndarray:
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != self.latent_dim or z.shape[0] == 0:
      raise ValueError(f"z has shape {z.shape}; the model decodes (B >= 1, {self.latent_dim}).")
    if not np.isfinite(z).all():
      raise ValueError("z has non-finite values (NaN or inf).")
    return z


def _check_params_fit(model: Any, params: Any, example_shape: tuple[int, ...],
                      source: Path) -> None:
  """Refuses parameters whose arrays differ from what ``model`` initialises (traced, not
  compiled): a config.json or dataset other than the ones the run was trained with."""
  dtype = np.int32 if codec.data_key(model) == "tokens" else np.float32
  x = jax.ShapeDtypeStruct((1, *example_shape), dtype)
  labels = jax.ShapeDtypeStruct((1,), np.int32) if codec.is_conditional(model) else None
  key = jax.random.key(0)
  built = jax.eval_shape(lambda x, y: model.init({"params": key, "sample": key}, x, y),
                         x, labels)["params"]
  want = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in
          jax.tree_util.tree_flatten_with_path(built)[0]}
  have = {jax.tree_util.keystr(p): tuple(np.shape(a)) for p, a in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  if want != have:
    differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    first = differ[0]
    raise ValueError(
        f"The parameters in {source} do not fit the model built from the run's config and "
        f"dataset ({len(differ)} array(s) differ, e.g. {first}: {have.get(first)} stored, "
        f"{want.get(first)} built): was config.json changed, or another dataset= given?")
