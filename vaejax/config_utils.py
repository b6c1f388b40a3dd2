"""Training configs: the schema, eager validation and the resume-compatibility check.

A training config is an ``ml_collections.ConfigDict`` (see ``experiments/configs/``) with
the top-level numbers :data:`REQUIRED_TOP_LEVEL` and the groups ``model`` (keys of
:func:`vaejax.models.create_model`), ``data`` (keys of :func:`vaejax.data.load`),
``loss`` (:class:`vaejax.objectives.LossSettings` fields plus ``free_bits_groups``),
``optimizer``, ``eval`` and ``figures``. The ``model`` and ``data`` groups are checked by
their registries; this module checks the rest, so that every mistake is one clear error
raised before anything is compiled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from vaejax.objectives import LossSettings

REQUIRED_TOP_LEVEL = (
    "num_steps", "batch_size", "seed", "learning_rate", "log_every", "checkpoint_every",
    "eval_every",
)

GROUP_KEYS: dict[str, tuple[str, ...] | None] = {
    "model": None,  # validated by vaejax.models.create_model
    "data": None,  # validated by vaejax.data.load
    "loss": LossSettings._fields + ("free_bits_groups",),
    "optimizer": ("b1", "b2", "eps", "warmup_steps", "grad_clip_norm", "max_consecutive_skips"),
    "eval": ("num_batches", "batch_size", "split"),
    "figures": (
        "enabled", "num_images", "traversal_steps", "traversal_range", "max_traversal_dims",
    ),
    "disentanglement": ("enabled", "preset", "seed", "metrics"),
}

# Groups a config may omit (configs and runs older than the group): absent = disabled.
OPTIONAL_GROUPS = ("disentanglement",)

# Keys a user may change when re-running a command to continue a run: they change how
# long it runs, what it reports and where files live, never the training trajectory.
RESUMABLE_KEYS = (
    "num_steps", "log_every", "eval_every", "checkpoint_every",
    "eval.*", "figures.*", "disentanglement.*", "data.path", "data.data_dir",
    "optimizer.max_consecutive_skips",
)


class ConfigError(ValueError):
  """A config value that is missing, unknown or out of range."""


class UnknownKeyError(KeyError, ConfigError):
  """A config key that does not exist (a KeyError and a ValueError, printed plainly)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


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


def _ignored(key: str, patterns: Iterable[str]) -> bool:
  for pattern in patterns:
    if pattern.endswith(".*") and key.startswith(pattern[:-1]):
      return True
    if key == pattern:
      return True
  return False


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
  diffs = config_diff(saved, config, ignore=ignore)
  if diffs:
    described = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs)
    raise ConfigError(
        f"The workdir holds a checkpoint ({where}) from a different config ({described}). "
        "Use a new --workdir, or restore those values to continue the run (only "
        f"{', '.join(ignore)} may change)."
    )


def _number(config: Any, name: str, *, minimum: float, integer: bool, strict: bool) -> None:
  value = config.get(name)
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type or not math.isfinite(value):
    kind = "an integer" if integer else "a finite number"
    raise ConfigError(f"Config {name}={value!r} must be {kind}.")
  if (value <= minimum) if strict else (value < minimum):
    relation = ">" if strict else ">="
    raise ConfigError(f"Config {name}={value!r} must be {relation} {minimum:g}.")


def _check_group_keys(config: ml_collections.ConfigDict, group: str) -> None:
  allowed = GROUP_KEYS[group]
  if allowed is None:
    return
  sub = config[group]
  if not isinstance(sub, (ml_collections.ConfigDict, Mapping)):
    raise ConfigError(f"Config {group!r} must be a group (ConfigDict), got {sub!r}.")
  for key in sub:
    if key not in allowed:
      raise UnknownKeyError(
          f"Unknown config key '{group}.{key}'; the keys of '{group}' are: "
          f"{', '.join(allowed)}."
      )


def disentanglement_enabled(config: Any) -> bool:
  """Whether a config asks for the disentanglement metrics (absent group: no)."""
  group = config.get("disentanglement")
  return bool(group is not None and group.get("enabled", False))


def validate_config(
    config: ml_collections.ConfigDict,
    *,
    model_names: Iterable[str] | None = None,
    dataset_names: Iterable[str] | None = None,
    extra_keys: Iterable[str] = (),
) -> None:
  """Checks a training config eagerly; raises one ConfigError (or UnknownKeyError).

  Args:
    config: the training config.
    model_names, dataset_names: the registries' names, to reject unknown ones early.
    extra_keys: further top-level keys a caller (e.g. a sweep) adds and checks itself.
  """
  allowed_top = set(REQUIRED_TOP_LEVEL) | set(GROUP_KEYS) | set(extra_keys)
  for key in config:
    if key not in allowed_top:
      raise UnknownKeyError(
          f"Unknown config key {key!r}; top-level keys are: {', '.join(sorted(allowed_top))}."
      )
  for key in (*REQUIRED_TOP_LEVEL, *GROUP_KEYS):
    if key not in config and key not in OPTIONAL_GROUPS:
      raise UnknownKeyError(f"The config lacks the required key {key!r}.")
  for group in GROUP_KEYS:
    if group in config:
      _check_group_keys(config, group)

  _number(config, "num_steps", minimum=0, integer=True, strict=True)
  _number(config, "batch_size", minimum=0, integer=True, strict=True)
  _number(config, "seed", minimum=0, integer=True, strict=False)
  _number(config, "learning_rate", minimum=0, integer=False, strict=True)
  _number(config, "log_every", minimum=0, integer=True, strict=True)
  _number(config, "checkpoint_every", minimum=0, integer=True, strict=True)
  _number(config, "eval_every", minimum=0, integer=True, strict=False)

  opt = config.optimizer
  for name in ("b1", "b2"):
    value = opt.get(name, 0.9)
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
      raise ConfigError(f"Config optimizer.{name}={value!r} must be in [0, 1).")
  _number(opt, "eps", minimum=0, integer=False, strict=True)
  _number(opt, "warmup_steps", minimum=0, integer=True, strict=False)
  _number(opt, "grad_clip_norm", minimum=0, integer=False, strict=False)
  _number(opt, "max_consecutive_skips", minimum=0, integer=True, strict=False)

  _number(config.eval, "num_batches", minimum=0, integer=True, strict=False)
  _number(config.eval, "batch_size", minimum=0, integer=True, strict=True)
  figures = config.figures
  _number(figures, "num_images", minimum=1, integer=True, strict=False)
  _number(figures, "traversal_steps", minimum=2, integer=True, strict=False)
  _number(figures, "traversal_range", minimum=0, integer=False, strict=True)
  _number(figures, "max_traversal_dims", minimum=1, integer=True, strict=False)

  for group, names in (("model", model_names), ("data", dataset_names)):
    name = config[group].get("name")
    if names is not None and name not in set(names):
      raise ConfigError(
          f"Unknown {group} name {name!r}; known {group} names: {', '.join(sorted(names))}."
      )
