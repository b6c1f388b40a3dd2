r"""The sweep grid: dotted config keys × values → points → groups of stackable models.

A grid is a list of axes ``KEY=V1,V2,...`` (the ``--grid`` flags of
``experiments.sweep``, or a config's default ``grid``). KEY is a dotted key of the
training config (``loss.beta``, ``learning_rate``, ``model.latent_dim``, ...) or
``seed``; each value is parsed exactly as ``--config.KEY=V`` parses it (ml_collections'
parser for the field's type), and values are split on commas outside brackets and
quotes, so ``model.hidden_sizes=(64,32),(128,)`` has two values. Every combination is
one model (a *point*: the dict of its values by key); models follow the order of the
axes, the last varying fastest. Keys varied *together* share an axis (big_vision's
``zipit``): ``loss.capacity_max,loss.capacity_steps=(5,1000),(25,5000)`` gives two
points, each value a bracketed tuple with one element per key, each element parsed for
its own key.

Model *i* of a sweep is the run ``experiments.train --config=<same> --config.KEY=V ...``
with point *i*'s values: :func:`apply_point` builds that run's config the same way.

What stacks into one compiled program is an allow-list (:data:`STACKABLE`): the seed,
the numeric loss settings, the learning rate and its warm-up length, all of which the
train step takes as traced numbers. Any other key (shapes, the model, static optimizer
settings) and whether β-TC is on (a static switch: its O(B²d) estimate is compiled in
or out) split the points into :class:`Group`\ s, each one program, run one after another.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
from ml_collections.config_flags import config_flags as _config_flags
from ml_collections.config_flags import config_path

from vaejax.objectives import LossSettings
from vaejax.config import ConfigError

Point = dict[str, Any]

# Keys that vary inside one program: traced per-model numbers of the train step.
STACKABLE = ("seed", "learning_rate", "optimizer.warmup_steps") + tuple(
    f"loss.{f}" for f in LossSettings._fields)


class Axis(NamedTuple):
  """One ``--grid`` flag: its dotted key(s) and parsed values (tuples for zipped keys)."""

  keys: tuple[str, ...]
  values: tuple[Any, ...]

  @property
  def key(self) -> str:
    return ",".join(self.keys)


class Group(NamedTuple):
  """Points that stack into one program.

  Attributes:
    index: the group's number (0, 1, ... in order of first appearance).
    models: global model indices (positions in the list of points).
    static: the group's values of the keys that do not stack (its identity).
  """

  index: int
  models: tuple[int, ...]
  static: dict[str, Any]


def split_values(text: str) -> list[str]:
  """``"1,(2,3),'a,b'"`` → ``["1", "(2,3)", "'a,b'"]``: commas outside brackets and quotes."""
  parts, depth, quote, current = [], 0, None, []
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append("".join(current).strip())
      current = []
      continue
    current.append(char)
  parts.append("".join(current).strip())
  return parts


def _parser(config: ml_collections.ConfigDict, key: str) -> Any:
  """The parser ``--config.KEY=V`` uses for ``key`` (ml_collections' own table)."""
  field_type = config_path.get_type(key, config)
  table = _config_flags._FIELD_TYPE_TO_PARSER  # pylint: disable=protected-access
  if field_type in table:
    return table[field_type]
  origin = config_path.get_origin(field_type)
  if origin in table:
    return table[origin]
  raise ConfigError(f"Grid key {key!r} holds a {field_type.__name__}, which cannot be set "
                    "from the command line (nor swept).")


def _unquote(text: str) -> str:
  """One matching pair of outer quotes removed, as the shell removes them from
  ``--config.KEY='a,b'``: in a grid they protect commas inside a value."""
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    return text[1:-1]
  return text


def parse_value(config: ml_collections.ConfigDict, key: str, text: str) -> Any:
  """``text`` parsed as ``--config.KEY=text`` would parse it; one ConfigError if it can't."""
  try:
    return _parser(config, key).parse(text)
  except (ValueError, TypeError, SyntaxError) as error:
    message = " ".join(str(error).split())
    raise ConfigError(f"Grid value {text!r} for {key!r} does not parse as its type: "
                      f"{message}.") from None


def _check_key(config: ml_collections.ConfigDict, key: str) -> None:
  try:
    value = config_path.get_value(key, config)
  except (KeyError, AttributeError, IndexError, TypeError):
    value = None
    found = False
  else:
    found = True
  if not found or isinstance(value, ml_collections.ConfigDict) or key in ("grid",):
    raise ConfigError(
        f"Grid key {key!r} is not a value of the training config; use a dotted key such "
        "as 'loss.beta', 'learning_rate', 'model.latent_dim', or 'seed'.")


def parse_axis(config: ml_collections.ConfigDict, spec: str) -> Axis:
  """One ``KEY=V1,V2,...`` (or ``K1,K2=(a1,b1),(a2,b2)``) string → :class:`Axis`."""
  if not isinstance(spec, str) or "=" not in spec:
    raise ConfigError(f"Grid {spec!r} must look like KEY=V1,V2,... (e.g. loss.beta=1,4).")
  key_text, _, text = spec.partition("=")
  keys = tuple(k.strip() for k in key_text.split(","))
  for key in keys:
    _check_key(config, key)
  if len(set(keys)) != len(keys):
    raise ConfigError(f"Grid {spec!r} names a key twice.")
  texts = split_values(text)
  if not text.strip() or any(not t for t in texts):
    raise ConfigError(f"Grid {spec!r} has an empty value; give KEY=V1,V2,...")
  # Quotes around a value are grid syntax (they protect its commas), removed as the shell
  # removes them from --config.KEY='a,b' before that flag parses the value.
  if len(keys) == 1:
    values = tuple(parse_value(config, keys[0], _unquote(t)) for t in texts)
  else:
    values = []
    for t in texts:
      parts = split_values(t[1:-1]) if t[:1] in "([" and t[-1:] in ")]" else None
      if parts is None or len(parts) != len(keys) or any(not p for p in parts):
        raise ConfigError(
            f"Grid {spec!r}: the value {t!r} must be a bracketed tuple of {len(keys)} values, "
            f"one per key ({', '.join(keys)}), e.g. {key_text}=(a,b),(c,d).")
      values.append(tuple(parse_value(config, k, _unquote(p)) for k, p in zip(keys, parts)))
    values = tuple(values)
  if len(set(map(repr, values))) != len(values):
    raise ConfigError(f"Grid {spec!r} repeats a value; each value may appear once.")
  return Axis(keys, values)


def parse_grid(config: ml_collections.ConfigDict, specs: Iterable[str],
               overridden: Collection[str] = ()) -> list[Axis]:
  """The axes of ``specs``, in order; errors for repeated keys and keys set elsewhere.

  Args:
    config: the training config the keys belong to.
    specs: ``KEY=V1,V2,...`` strings.
    overridden: keys also set by ``--config.KEY=...`` on the command line (an error:
      the grid and the override would disagree about the value).
  """
  axes = [parse_axis(config, spec) for spec in specs]
  seen = set()
  for axis in axes:
    for key in axis.keys:
      if key in seen:
        raise ConfigError(f"Grid key {key!r} appears twice; give each key one --grid.")
      if key in overridden:
        raise ConfigError(f"Grid key {key!r} is also set by --config.{key}; set it in one "
                          "place.")
      seen.add(key)
  return axes


def points(axes: Sequence[Axis]) -> list[Point]:
  """Every combination of the axes' values; first axis outermost, the last fastest."""
  out = []
  for combo in itertools.product(*(a.values for a in axes)):
    point: Point = {}
    for axis, value in zip(axes, combo):
      point.update(zip(axis.keys, value) if len(axis.keys) > 1 else {axis.keys[0]: value})
    out.append(point)
  return out


def apply_point(config: ml_collections.ConfigDict, point: Mapping[str, Any]
                ) -> ml_collections.ConfigDict:
  """The config of the single run at ``point``: a copy with each key set to its value."""
  run = copy.deepcopy(config)
  with run.unlocked():
    for key, value in point.items():
      config_path.set_value(key, run, value)
  return run


def with_grid(config: ml_collections.ConfigDict, specs: Sequence[str]
              ) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose ``grid`` is ``specs`` (what a sweep records in config.json)."""
  run = copy.deepcopy(config)
  with run.unlocked():
    run.grid = tuple(specs)
  return run


def tc_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether the β-TC term is compiled in (``loss.tc_beta`` ≠ 1)."""
  return float(config.loss.tc_beta) != 1.0


def groups(config: ml_collections.ConfigDict, pts: Sequence[Point]) -> list[Group]:
  """Splits points into groups that stack: equal values of every non-stackable key and
  the same β-TC switch; in order of first appearance, models keeping their order."""
  keyed: dict[str, tuple[dict[str, Any], list[int]]] = {}
  for i, point in enumerate(pts):
    static = {k: v for k, v in point.items() if k not in STACKABLE}
    static_key = repr(sorted(static.items())) + repr(tc_enabled(apply_point(config, point)))
    keyed.setdefault(static_key, (static, []))[1].append(i)
  return [Group(g, tuple(models), static)
          for g, (static, models) in enumerate(keyed.values())]


def point_label(point: Mapping[str, Any]) -> str:
  """``"loss.beta=4 seed=1"`` (numbers in short form)."""
  def fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)
  return " ".join(f"{k}={fmt(v)}" for k, v in point.items()) or "single run"
