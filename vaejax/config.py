"""The training config: its one schema, eager validation and the resume check.

:func:`base_config` is the only place where the keys of a training config and their
defaults are written; experiment configs (``experiments/configs/``) start from it and
override values, and :func:`validate` derives the allowed keys from it. Every config of
``experiments.train``, ``experiments.sweep`` and ``experiments.evaluate`` has:

* top level: ``num_steps``, ``batch_size``, ``seed``, ``learning_rate``, ``log_every``,
  ``checkpoint_every``;
* ``model`` (:func:`vaejax.models.create_model`) and ``data`` (:func:`vaejax.data.load`),
  checked by their registries;
* ``loss``: :class:`vaejax.objectives.LossSettings` fields plus ``free_bits_groups``;
* ``optimizer``: Adam's ``b1``, ``b2``, ``eps``; ``warmup_steps`` (linear learning-rate
  warm-up), ``grad_clip_norm``, ``max_consecutive_skips``;
* ``monitor``: the posterior-collapse warning (``collapse_kl``, ``collapse_patience``);
* ``eval``: the held-out data every evaluator reads (``split``, ``batch_size``,
  ``num_batches``);
* ``evals``: the evaluators, one group each with ``type``, ``every`` (every N steps; 0 =
  not periodically) and ``at_end`` (after the last step), plus the type's own keys; the
  defaults hold one evaluator of every type, named after it;
* ``grid``: a default sweep grid, ``("KEY=V1,V2,...", ...)`` in the language of
  ``experiments.sweep --grid`` (``experiments.train`` ignores it);
* ``execution``: how a stack of models runs (``strategy``, ``chunk_size``,
  ``model_devices``, ``data_devices``, ``memory_budget_gb``).

This module imports only ml_collections, the standard library and :mod:`vaejax.utils`, so
config files can import it as they import each other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from vaejax.utils.checks import check_number

STRATEGIES = ("auto", "vmap", "sequential", "chunked")

# Keys a user may change when re-running a command to continue a run: they change how
# long it runs, what it reports, where files live and where models run, never what a
# model computes. (Placement can change float summation order, not the trajectory's maths.)
RESUMABLE_KEYS = (
    "num_steps", "log_every", "checkpoint_every", "eval.*", "evals.*", "monitor.*", "grid",
    "execution.*", "data.path", "data.data_dir", "optimizer.max_consecutive_skips",
)


class ConfigError(ValueError):
  """A config value that is missing, unknown or out of range."""


class UnknownKeyError(KeyError, ConfigError):
  """A config key that does not exist (a KeyError and a ValueError, printed plainly)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def base_config() -> ml_collections.ConfigDict:
  """A complete training config with neutral defaults; experiment configs override values."""
  config = ml_collections.ConfigDict()
  config.num_steps = 10_000
  config.batch_size = 64
  config.seed = 0
  config.learning_rate = 1e-3
  config.log_every = 100
  config.checkpoint_every = 1000

  config.model = _model_group()
  config.data = _data_group()
  config.loss = _loss_group()
  config.optimizer = _optimizer_group()
  config.monitor = _monitor_group()
  config.eval = _eval_group()
  config.evals = _evals_group()
  config.grid = ()  # the default sweep grid of experiments.sweep, e.g. ("loss.beta=1,4",)
  config.execution = _execution_group()
  return config


def _model_group() -> ml_collections.ConfigDict:
  """The model: a registry name and its keys (:func:`vaejax.models.create_model`)."""
  return ml_collections.ConfigDict({
      "name": "mlp_vae",
      "latent_dim": 10,
      "hidden_sizes": (512, 256),
      "likelihood": "bernoulli",  # "bernoulli" | "gaussian" | "gaussian_learned"
      "likelihood_variance": 1.0,  # "gaussian" only
      "min_variance": None,  # "gaussian_learned" only: optional variance floor
      "posterior_min_variance": 0.0,  # smooth floor under q(z|x)'s variances; 0 = off
      "conv_impl": "fast",  # "fast" | "textbook" (conv_vae)
      "dtype": "float32",  # computation dtype; params stay float32
  })


def _data_group() -> ml_collections.ConfigDict:
  """The dataset: a registry name and its reader's keys (:func:`vaejax.data.load`)."""
  return ml_collections.ConfigDict({
      "name": "dsprites_procedural",
      # None = unset (the dataset's default). FieldReferences so the command line can
      # set a string where the default is None.
      "path": ml_collections.FieldReference(None, field_type=str),  # file-backed datasets
      "data_dir": ml_collections.FieldReference(None, field_type=str),  # TFDS data_dir
      # share held out as "test" (mnist_npz; dsprites, where 0 = one split, dlib's protocol)
      "test_fraction": ml_collections.FieldReference(None, field_type=float),
      "binarize": "none",  # "none" | "static" | "dynamic" (images; text takes "none")
      # Token-sequence datasets: vocabulary size (specials included) and the least count
      # of a word (rarer words → <unk>), tokens per sentence incl. <eos> (None: defaults).
      "max_vocab": ml_collections.FieldReference(None, field_type=int),
      "min_count": ml_collections.FieldReference(None, field_type=int),
      "max_length": ml_collections.FieldReference(None, field_type=int),
  })


def _loss_group() -> ml_collections.ConfigDict:
  """The objective: :class:`vaejax.objectives.LossSettings` fields plus ``free_bits_groups``."""
  return ml_collections.ConfigDict({
      "beta": 1.0,
      "free_bits": 0.0,
      "warmup_steps": 0,
      "cycle_steps": 0,
      "capacity_gamma": 0.0,
      "capacity_max": 0.0,
      "capacity_steps": 0,
      "tc_beta": 1.0,
      "dataset_size": 0,
      "warmup_start": 0.0,  # KL weight at the start of the warm-up, in [0, 1] (Texar: 0.1)
      # Free-bits group id per latent dimension (e.g. per stochastic layer); None = the
      # model's own groups (hierarchical: its levels), else one group per dimension.
      "free_bits_groups": ml_collections.FieldReference(None, field_type=tuple),
      # Importance-weighted training (IWAE/MIWAE): K samples per example (1 = the ELBO
      # with closed-form KL), the gradient estimator ("plain" | "dreg"), M groups.
      "num_importance_samples": 1,
      "estimator": "plain",
      "num_groups": 1,
  })


def _optimizer_group() -> ml_collections.ConfigDict:
  """Adam's moments, learning-rate warm-up, clipping and skipping of bad updates."""
  return ml_collections.ConfigDict({
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
      "warmup_steps": 0,  # linear learning-rate warm-up from 0 (a per-model number)
      "grad_clip_norm": 0.0,  # global-norm clipping; 0 = off
      "skip_threshold": 0.0,  # skip updates whose gradient norm exceeds it (VDVAE); 0 = off
      "max_consecutive_skips": 10,  # non-finite updates in a row before a model stops
  })


def _monitor_group() -> ml_collections.ConfigDict:
  """The posterior-collapse warning."""
  return ml_collections.ConfigDict({
      # A warning (and "posterior_collapse": true in the rows) when the KL of every example
      # of the batch stays below collapse_kl nats for collapse_patience logged steps.
      "collapse_kl": 0.01,
      "collapse_patience": 5,  # 0 = off
  })


def _eval_group() -> ml_collections.ConfigDict:
  """The held-out data every evaluator reads."""
  return ml_collections.ConfigDict({
      "split": "",  # "" = "test", else "validation"; procedural data: its own key stream
      "batch_size": 256,
      "num_batches": 10,  # 0 = every full batch of a finite split
  })


def _evals_group() -> ml_collections.ConfigDict:
  """The evaluators: one group each (``type``, ``every``, ``at_end`` and its own keys)."""
  return ml_collections.ConfigDict({
      # Held-out ELBO terms, bits/dim and active units (Burda et al.) of every model.
      "elbo": {"type": "elbo", "every": 1000, "at_end": True},
      # Importance-weighted NLL (IWAE bound, K samples); usually run by experiments.evaluate.
      "iwae": {"type": "iwae", "every": 0, "at_end": False, "num_samples": 1000,
               "chunk_size": 100, "max_examples": 0, "seed": 0},  # max_examples 0 = all
      # The six disentanglement metrics on the encoder mean (ground-truth datasets);
      # preset "dlib" = disentanglement_lib's sample counts, "cpu" = reduced counts.
      "disentanglement": {"type": "disentanglement", "every": 0, "at_end": False,
                          "preset": "dlib", "seed": 0, "metrics": ()},  # () = all six
      # Reconstructions, samples, traversals, interpolation, KL per dimension, animated
      # traversals (gif_frames per cycle; 0 = none) and, with labels, latent arithmetic.
      "figures": {"type": "figures", "every": 0, "at_end": True, "num_images": 8,
                  "traversal_steps": 9, "traversal_range": 2.5, "max_traversal_dims": 10,
                  "gif_frames": 20},
      # disentanglement_lib's unsupervised scores on the encoder mean (no labels used):
      # Gaussian total correlation, Wasserstein correlation, mean pairwise MI.
      "unsupervised": {"type": "unsupervised", "every": 0, "at_end": False,
                       "num_points": 10_000, "seed": 0},
      # UDR (Duan et al. 2020): agreement of the models of one setting (other seeds).
      "udr": {"type": "udr", "every": 0, "at_end": False, "num_points": 1000,
              "method": "lasso", "seed": 0},
      # Latent arithmetic on dSprites: attribute vectors, measured on decoded sprites.
      "arithmetic": {"type": "arithmetic", "every": 0, "at_end": False, "num_examples": 500,
                     "num_queries": 100, "alpha": 1.0, "seed": 0},
      # Text models over the whole held-out split: IWAE NLL (K = num_samples, He et al.'s
      # 500), perplexity, KL, MI, active units; reconstructions, prior samples and
      # homotopies as .txt (num_sentences of each; 0 = none). Logs eval/* when named "text".
      "text": {"type": "text", "every": 0, "at_end": False, "num_samples": 500,
               "chunk_size": 10, "batch_size": 50, "num_sentences": 10,
               "homotopy_steps": 5, "seed": 0},
  })


def _execution_group() -> ml_collections.ConfigDict:
  """How a stack of models runs: strategy, chunking, device mesh, memory."""
  return ml_collections.ConfigDict({
      "strategy": "auto",  # "auto" | "vmap" | "sequential" | "chunked"
      "chunk_size": 0,  # models per program for "chunked"
      "model_devices": 1,  # mesh: devices along the model axis (0 = all)
      "data_devices": 1,  # mesh: devices along the data axis (0 = all)
      "memory_budget_gb": 0.0,  # 0 = the device's free memory (CPU: 80% of available RAM)
  })


# ----------------------------------------------------------------------------- plain dicts


def to_dict(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-normal copy of a config: nested dicts, lists instead of tuples."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; sequences stay values."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved config (a plain dict) completed with the schema's defaults for the keys it
  lacks (keys the schema gained after it was written); its evaluators stay as saved, each
  completed with its type's defaults."""
  defaults = to_dict(base_config())

  def merge(default, value):
    if isinstance(default, dict) and isinstance(value, dict):
      return {**default, **{k: merge(default.get(k), v) for k, v in value.items()}}
    return value

  merged = merge(defaults, to_dict(saved))
  merged["evals"] = {name: merge(defaults["evals"].get(group.get("type"), {}), group)
                     for name, group in to_dict(saved).get("evals", defaults["evals"]).items()}
  return merged


def _ignored(key: str, patterns: Iterable[str]) -> bool:
  return any(key.startswith(p[:-1]) if p.endswith(".*") else key == p for p in patterns)


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = RESUMABLE_KEYS
) -> list[tuple[str, Any, Any]]:
  """Sorted ``(dotted key, old value, new value)`` for every differing key not ignored.

  A key present on one side only appears with ``"<absent>"`` on the other.
  """
  flat_old, flat_new = flatten(to_dict(old)), flatten(to_dict(new))
  absent = "<absent>"
  diffs = []
  for key in sorted(set(flat_old) | set(flat_new)):
    if _ignored(key, ignore):
      continue
    a, b = flat_old.get(key, absent), flat_new.get(key, absent)
    if a != b:
      diffs.append((key, a, b))
  return diffs


def check_resumable(
    saved: Mapping[str, Any], config: Mapping[str, Any], where: str,
    ignore: Iterable[str] = RESUMABLE_KEYS,
) -> None:
  """Raises ConfigError naming every differing key when ``config`` cannot continue ``saved``.

  Args:
    saved: the config stored with the checkpoint.
    config: the config of the run about to start.
    where: the checkpoint directory, for the message.
    ignore: keys (patterns) allowed to differ; default :data:`RESUMABLE_KEYS`.
  """
  ignore = tuple(ignore)
  diffs = config_diff(with_defaults(saved), config, ignore=ignore)
  if diffs:
    described = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs)
    raise ConfigError(
        f"The workdir holds a checkpoint ({where}) from a different config ({described}). "
        "Use a new --workdir, or restore those values to continue the run (only "
        f"{', '.join(ignore)} may change)."
    )


# ----------------------------------------------------------------------------- validation


def _number(group: Any, name: str, *, minimum: float, integer: bool, strict: bool,
            prefix: str = "") -> None:
  value = group.get(name)
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type or not math.isfinite(value):
    kind = "an integer" if integer else "a finite number"
    raise ConfigError(f"Config {prefix}{name}={value!r} must be {kind}.")
  if (value <= minimum) if strict else (value < minimum):
    relation = ">" if strict else ">="
    raise ConfigError(f"Config {prefix}{name}={value!r} must be {relation} {minimum:g}.")


def _check_keys(group: Any, allowed: Iterable[str], name: str) -> None:
  allowed = tuple(allowed)
  if not isinstance(group, (ml_collections.ConfigDict, Mapping)):
    raise ConfigError(f"Config {name!r} must be a group (ConfigDict), got {group!r}.")
  for key in group:
    if key not in allowed:
      where = f"'{name}.{key}'" if name else repr(key)
      of = f"the keys of '{name}' are" if name else "top-level keys are"
      raise UnknownKeyError(f"Unknown config key {where}; {of}: {', '.join(allowed)}.")
  for key in allowed:
    if key not in group:
      raise UnknownKeyError(f"The config lacks the key '{name + '.' if name else ''}{key}'.")


def eval_types() -> tuple[str, ...]:
  """The evaluator types the schema knows (each has a default entry in ``evals``)."""
  return tuple(base_config().evals.keys())


def _check_evals(evals: Any) -> None:
  defaults = base_config().evals
  if not isinstance(evals, (ml_collections.ConfigDict, Mapping)):
    raise ConfigError(f"Config 'evals' must be a group of evaluators, got {evals!r}.")
  for name, group in evals.items():
    if not isinstance(group, (ml_collections.ConfigDict, Mapping)) or "type" not in group:
      raise ConfigError(f"Config evals.{name} must be a group with a 'type' (one of "
                        f"{', '.join(defaults)}); got {group!r}.")
    kind = group["type"]
    if kind not in defaults:
      raise ConfigError(f"Config evals.{name}.type={kind!r} is not an evaluator type; known "
                        f"types: {', '.join(defaults)}.")
    _check_keys(group, defaults[kind].keys(), f"evals.{name}")
    _number(group, "every", minimum=0, integer=True, strict=False, prefix=f"evals.{name}.")
    if not isinstance(group["at_end"], bool):
      raise ConfigError(f"Config evals.{name}.at_end={group['at_end']!r} must be True or False.")


def _check_execution(execution: Any) -> None:
  if execution["strategy"] not in STRATEGIES:
    raise ConfigError(f"Config execution.strategy={execution['strategy']!r} is not a "
                      f"strategy; expected one of {STRATEGIES}.")
  for name in ("chunk_size", "model_devices", "data_devices"):
    _number(execution, name, minimum=0, integer=True, strict=False, prefix="execution.")
  _number(execution, "memory_budget_gb", minimum=0, integer=False, strict=False,
          prefix="execution.")


def _check_grid(grid: Any) -> None:
  if isinstance(grid, str) or not isinstance(grid, (tuple, list)) or not all(
      isinstance(g, str) for g in grid):
    raise ConfigError(f"Config grid={grid!r} must be a tuple of 'KEY=V1,V2,...' strings "
                      "(e.g. ('loss.beta=1,4', 'seed=0,1')).")


def validate(
    config: ml_collections.ConfigDict,
    *,
    model_names: Iterable[str] | None = None,
    dataset_names: Iterable[str] | None = None,
) -> None:
  """Checks a training config eagerly; raises one ConfigError (or UnknownKeyError).

  Keys come from :func:`base_config` (the ``model`` and ``data`` groups are checked by
  their registries when the run builds them); values must be in range.

  Args:
    config: the training config.
    model_names, dataset_names: the registries' names, to reject unknown ones early.
  """
  schema = base_config()
  _check_keys(config, schema.keys(), "")
  for group in ("loss", "optimizer", "monitor", "eval", "execution"):
    _check_keys(config[group], schema[group].keys(), group)

  _number(config, "num_steps", minimum=0, integer=True, strict=True)
  _number(config, "batch_size", minimum=0, integer=True, strict=True)
  _number(config, "seed", minimum=0, integer=True, strict=False)
  if config.seed >= 2**32:
    raise ConfigError(f"Config seed={config.seed!r} must be < 2**32.")
  _number(config, "learning_rate", minimum=0, integer=False, strict=True)
  _number(config, "log_every", minimum=0, integer=True, strict=True)
  _number(config, "checkpoint_every", minimum=0, integer=True, strict=True)

  opt = config.optimizer
  for name in ("b1", "b2"):
    value = opt[name]
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
      raise ConfigError(f"Config optimizer.{name}={value!r} must be in [0, 1).")
  _number(opt, "eps", minimum=0, integer=False, strict=True, prefix="optimizer.")
  _number(opt, "warmup_steps", minimum=0, integer=True, strict=False, prefix="optimizer.")
  _number(opt, "grad_clip_norm", minimum=0, integer=False, strict=False, prefix="optimizer.")
  _number(opt, "skip_threshold", minimum=0, integer=False, strict=False, prefix="optimizer.")
  _number(opt, "max_consecutive_skips", minimum=0, integer=True, strict=False,
          prefix="optimizer.")

  check_number(config.loss.warmup_start, "Config loss.warmup_start", minimum=0, maximum=1,
               error=ConfigError)
  _number(config.monitor, "collapse_kl", minimum=0, integer=False, strict=False,
          prefix="monitor.")
  _number(config.monitor, "collapse_patience", minimum=0, integer=True, strict=False,
          prefix="monitor.")
  _number(config.eval, "num_batches", minimum=0, integer=True, strict=False, prefix="eval.")
  _number(config.eval, "batch_size", minimum=0, integer=True, strict=True, prefix="eval.")
  if not isinstance(config.eval.split, str):
    raise ConfigError(f"Config eval.split={config.eval.split!r} must be a split name or ''.")
  _check_evals(config.evals)
  _check_grid(config.grid)
  _check_execution(config.execution)

  for group, names in (("model", model_names), ("data", dataset_names)):
    name = config[group].get("name")
    if names is not None and name not in set(names):
      raise ConfigError(
          f"Unknown {group} name {name!r}; known {group} names: {', '.join(sorted(names))}."
      )
