"""The sweep grid language (vaejax.sweeps.grid): KEY=V1,V2 axes, points and groups.

Values must parse exactly as ``--config.KEY=V`` parses them, so the reference is
ml_collections itself: a fresh absl ``FlagValues`` with ``config_flags.DEFINE_config_dict``
parses ``--config.KEY=V`` and the test compares value and type. Products, ``apply_point``
and the grouping are checked against loops and assignments written here.
"""

import hypothesis
import hypothesis.strategies as st
import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from vaejax import config as config_lib
from vaejax.sweeps import grid
from vaejax.training import loop

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

# The keys the train step takes as traced per-model numbers (written out, not imported).
STACKABLE_KEYS = ("seed", "learning_rate", "optimizer.warmup_steps", "loss.beta",
                  "loss.free_bits", "loss.warmup_steps", "loss.cycle_steps",
                  "loss.capacity_gamma", "loss.capacity_max", "loss.capacity_steps",
                  "loss.tc_beta", "loss.dataset_size", "loss.warmup_start")


def base():
  return config_lib.base_config()


def get(config, key):
  """``config.a.b`` for ``"a.b"``, walking the groups by hand."""
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def parsed_by_config_flags(key, text):
  """What ``prog --config.KEY=TEXT`` leaves in the config (ml_collections' own parser)."""
  argv = ["prog", f"--config.{key}={text}"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", base(), flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return get(flag_values.config, key)


# ----------------------------------------------------------------------------- split_values


@pytest.mark.parametrize("text,parts", [
    ("1", ["1"]),
    ("1,4", ["1", "4"]),
    (" 1 , 4 ", ["1", "4"]),
    ("(64,32),(128,)", ["(64,32)", "(128,)"]),
    ("((1,2),(3,)),4", ["((1,2),(3,))", "4"]),
    ("[1,2],{3,4}", ["[1,2]", "{3,4}"]),
    ("'a,b',\"c,d\",e", ["'a,b'", '"c,d"', "e"]),
    ("'(',1", ["'('", "1"]),  # a bracket inside quotes does not open a group
    ("1,,2", ["1", "", "2"]),
    ("", [""]),
])
def test_split_values_splits_on_commas_outside_brackets_and_quotes(text, parts):
  assert grid.split_values(text) == parts


@hypothesis.given(st.text(alphabet="0123456789.,-+()[]{}'\"abe_/", max_size=40))
def test_joining_the_parts_gives_the_input(text):
  """Without whitespace nothing is stripped: the split only removes the commas it cuts at."""
  assert ",".join(grid.split_values(text)) == text


NUMBER = st.integers(-999, 999).map(str) | st.floats(
    allow_nan=False, allow_infinity=False, width=32).map(repr)


def _tuple_text(items):
  return "(" + ",".join(items) + ("," if len(items) == 1 else "") + ")"


NESTED = st.recursive(NUMBER, lambda inner: st.lists(inner, min_size=1, max_size=3).map(
    _tuple_text), max_leaves=8)
QUOTED = st.text(alphabet="ab,() ", max_size=6).map(lambda s: f"'{s}'")


@hypothesis.given(st.lists(NESTED | QUOTED, min_size=1, max_size=5))
def test_values_with_nested_tuples_and_quoted_commas_come_back_whole(values):
  assert grid.split_values(",".join(values)) == values


# ----------------------------------------------------------------------------- parse_value


@pytest.mark.parametrize("key,text", [
    ("learning_rate", "1e-3"),
    ("learning_rate", "2"),  # an int text in a float field stays a float
    ("loss.beta", "inf"),
    ("seed", "3"),
    ("seed", "0x10"),
    ("model.latent_dim", "12"),
    ("model.hidden_sizes", "(64,32)"),
    ("model.hidden_sizes", "(128,)"),
    ("model.hidden_sizes", "[3,4]"),
    ("evals.disentanglement.metrics", "('mig',)"),
    ("model.name", "conv_vae"),
    ("model.name", "'conv_vae'"),  # quotes are kept, as --config keeps them
    ("data.binarize", "dynamic"),
    ("evals.figures.at_end", "False"),
    ("evals.figures.at_end", "true"),
    ("evals.figures.at_end", "1"),
    ("data.path", "/data/mnist10k.npz"),  # a None default (a typed FieldReference)
    ("data.data_dir", "None"),
    ("loss.free_bits_groups", "(0,0,1)"),  # a None-default tuple
])
def test_values_parse_as_config_flags_parses_them(key, text):
  want = parsed_by_config_flags(key, text)
  got = grid.parse_value(base(), key, text)
  assert type(got) is type(want)
  assert got == want


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(st.floats(allow_nan=False), st.integers(0, 2**32 - 1))
def test_numbers_parse_as_config_flags_parses_them(x, n):
  for key, text in (("learning_rate", repr(x)), ("loss.beta", str(x)), ("seed", str(n)),
                    ("model.hidden_sizes", f"({n},{n + 1})")):
    want = parsed_by_config_flags(key, text)
    got = grid.parse_value(base(), key, text)
    assert type(got) is type(want) and got == want


@pytest.mark.parametrize("key,text,match", [
    ("seed", "2.5", r"Grid value '2.5' for 'seed' does not parse as its type"),
    ("learning_rate", "fast", r"Grid value 'fast' for 'learning_rate' does not parse"),
    ("model.min_variance", "0.1", r"'model.min_variance' holds a NoneType, which cannot be set"),
])
def test_values_that_do_not_parse_for_their_type_fail_like_the_flag(key, text, match):
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    grid.parse_value(base(), key, text)
  assert "\n" not in str(info.value)
  with pytest.raises(flags.Error):  # the command line refuses the same text
    parsed_by_config_flags(key, text)


# ----------------------------------------------------------------------------- axes, points


def test_parse_grid_keeps_flag_order_and_parses_every_value():
  axes = grid.parse_grid(base(), ["loss.beta=1,4", "model.hidden_sizes=(8,),(16,8)",
                                  "seed=0,1,2"])
  assert axes == [grid.Axis(("loss.beta",), (1.0, 4.0)),
                  grid.Axis(("model.hidden_sizes",), ((8,), (16, 8))),
                  grid.Axis(("seed",), (0, 1, 2))]
  assert [type(v) for v in axes[0].values] == [float, float]


@hypothesis.given(st.lists(st.integers(1, 3), min_size=0, max_size=4))
def test_points_are_the_product_in_flag_order_last_fastest(sizes):
  axes = [grid.Axis((f"k{i}",), tuple(f"v{i}{j}" for j in range(n))) for i, n in enumerate(sizes)]
  # Point p is the mixed-radix number p in the digits of the axes, the last one lowest.
  expected = []
  total = 1
  for n in sizes:
    total *= n
  for p in range(total):
    point, rest = {}, p
    for i in reversed(range(len(sizes))):
      rest, digit = divmod(rest, sizes[i])
      point[f"k{i}"] = f"v{i}{digit}"
    expected.append({f"k{i}": point[f"k{i}"] for i in range(len(sizes))})
  got = grid.points(axes)
  assert got == expected
  assert all(list(p) == [a.key for a in axes] for p in got)  # keys in flag order


def test_apply_point_equals_setting_the_keys_by_hand():
  config = base()
  point = {"loss.beta": 4.0, "model.hidden_sizes": (8,), "seed": 3, "learning_rate": 0.5,
           "data.path": "/x.npz", "evals.figures.at_end": False}
  run = grid.apply_point(config, point)
  by_hand = base()
  by_hand.loss.beta = 4.0
  by_hand.model.hidden_sizes = (8,)
  by_hand.seed = 3
  by_hand.learning_rate = 0.5
  by_hand.data.path = "/x.npz"
  by_hand.evals.figures.at_end = False
  assert config_lib.to_dict(run) == config_lib.to_dict(by_hand)
  assert config_lib.to_dict(config) == config_lib.to_dict(base())  # a copy: template unchanged


def test_apply_point_keeps_references_between_fields():
  """A field defined from another (annealed capacity = num_steps // 3) follows the point."""
  config = base()
  config.loss.capacity_steps = config.get_ref("num_steps") // 3
  run = grid.apply_point(config, {"num_steps": 900})
  assert run.loss.capacity_steps == 300 and config.loss.capacity_steps == 10_000 // 3


def test_with_grid_records_the_axes_in_a_copy():
  config = base()
  run = grid.with_grid(config, ["loss.beta=1,4", "seed=0,1"])
  assert run.grid == ("loss.beta=1,4", "seed=0,1") and config.grid == ()


def test_point_label():
  assert grid.point_label({"loss.beta": 4.0, "seed": 1}) == "loss.beta=4 seed=1"
  assert grid.point_label({"learning_rate": 0.0005}) == "learning_rate=0.0005"
  assert grid.point_label({}) == "single run"


# ----------------------------------------------------------------------------- groups


def reference_groups(config, pts):
  """Groups by (values of every non-stackable key, whether tc_beta != 1), first-seen order."""
  keyed = {}
  for i, point in enumerate(pts):
    static = tuple((k, repr(v)) for k, v in point.items() if k not in STACKABLE_KEYS)
    tc_beta = point.get("loss.tc_beta", config.loss.tc_beta)
    keyed.setdefault((static, float(tc_beta) != 1.0), []).append(i)
  return [tuple(models) for models in keyed.values()]


def test_stackable_keys_are_the_train_steps_traced_numbers():
  assert sorted(grid.STACKABLE) == sorted(STACKABLE_KEYS)


def test_stackable_keys_stay_in_one_group():
  specs = ["seed=0,1", "loss.beta=1,4", "loss.free_bits=0,0.5", "learning_rate=0.001,0.01",
           "optimizer.warmup_steps=0,10", "loss.capacity_max=5,25"]
  pts = grid.points(grid.parse_grid(base(), specs))
  (group,) = grid.groups(base(), pts)
  assert group == grid.Group(0, tuple(range(64)), {})


def test_non_stackable_keys_split_the_points_into_groups():
  pts = grid.points(grid.parse_grid(base(), ["model.latent_dim=2,3", "loss.beta=1,4",
                                             "seed=0,1"]))
  groups = grid.groups(base(), pts)
  assert [g.models for g in groups] == [(0, 1, 2, 3), (4, 5, 6, 7)]
  assert [g.static for g in groups] == [{"model.latent_dim": 2}, {"model.latent_dim": 3}]
  assert [g.index for g in groups] == [0, 1]


@pytest.mark.parametrize("base_tc_beta,specs,expected", [
    (1.0, ["loss.tc_beta=1,2,6"], [(0,), (1, 2)]),  # the TC term is compiled in or out
    (1.0, ["loss.tc_beta=2,1,6", "seed=0,1"], [(0, 1, 4, 5), (2, 3)]),
    (6.0, ["loss.beta=1,4"], [(0, 1)]),  # every model has the TC term: one program
    (6.0, ["loss.tc_beta=4,6,8"], [(0, 1, 2)]),
])
def test_tc_beta_one_and_not_one_run_apart(base_tc_beta, specs, expected):
  config = base()
  config.loss.tc_beta = base_tc_beta
  pts = grid.points(grid.parse_grid(config, specs))
  groups = grid.groups(config, pts)
  assert [g.models for g in groups] == expected == reference_groups(config, pts)
  assert all(g.static == {} for g in groups)


AXES = {
    "seed": ("0", "1"), "loss.beta": ("1", "4"), "learning_rate": ("0.01", "0.001"),
    "loss.tc_beta": ("1", "3"), "model.latent_dim": ("2", "5"),
    "model.hidden_sizes": ("(8,)", "(4,4)"), "batch_size": ("8", "16"),
    "optimizer.warmup_steps": ("0", "5"), "optimizer.grad_clip_norm": ("0", "1"),
}


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(sorted(AXES)), min_size=1, max_size=4, unique=True),
                  st.data())
def test_groups_partition_the_points_like_the_reference(keys, data):
  specs = [f"{k}={','.join(data.draw(st.lists(st.sampled_from(AXES[k]), min_size=1, unique=True)))}"
           for k in keys]
  config = base()
  pts = grid.points(grid.parse_grid(config, specs))
  groups = grid.groups(config, pts)
  assert [g.models for g in groups] == reference_groups(config, pts)
  for g in groups:
    first = pts[g.models[0]]
    assert g.static == {k: v for k, v in first.items() if k not in STACKABLE_KEYS}


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("specs,overridden,match", [
    (["loss.beta"], (), r"Grid 'loss.beta' must look like KEY=V1,V2,\.\.\."),
    (["loss.beta="], (), r"Grid 'loss.beta=' has an empty value"),
    (["loss.beta=1,,4"], (), r"Grid 'loss.beta=1,,4' has an empty value"),
    (["loss.beta=1,4,"], (), r"has an empty value"),
    (["loss.beta=1,1.0"], (), r"Grid 'loss.beta=1,1.0' repeats a value"),
    (["seed=0,1", "seed=2"], (), r"Grid key 'seed' appears twice"),
    (["loss.beta=1,4"], ("loss.beta",), r"'loss.beta' is also set by --config.loss.beta"),
    (["loss.betta=1,4"], (), r"Grid key 'loss.betta' is not a value of the training config"),
    (["nmu_steps=1"], (), r"Grid key 'nmu_steps' is not a value of the training config"),
    (["loss=1"], (), r"Grid key 'loss' is not a value of the training config"),
    (["evals.elbo=1"], (), r"Grid key 'evals.elbo' is not a value"),
    (["grid=1"], (), r"Grid key 'grid' is not a value"),
    (["seed=0,a"], (), r"Grid value 'a' for 'seed' does not parse as its type"),
    (["learning_rate=1e-3,x"], (), r"Grid value 'x' for 'learning_rate' does not parse"),
    (["model.min_variance=0.1"], (), r"holds a NoneType, which cannot be set"),
])
def test_bad_grids_are_one_clear_error(specs, overridden, match):
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    grid.parse_grid(base(), specs, overridden)
  assert "\n" not in str(info.value)


def test_a_sweep_without_axes_or_with_a_bad_point_fails_before_anything_is_built(tmp_path):
  config = base()
  config.data.name = "no_such_data"  # never loaded: the grid fails first
  with pytest.raises(config_lib.ConfigError, match="The sweep has no grid"):
    loop.plan(config, tmp_path / "w", grid=[], dataset=object())
  with pytest.raises(ValueError,
                     match=r"Sweep point loss.beta=-1 seed=0: .*beta=-1.0 is negative"):
    loop.plan(config, tmp_path / "w", grid=["loss.beta=1,-1", "seed=0"], dataset=object())
  assert not (tmp_path / "w").exists()


def test_grid_keys_come_from_the_config_not_a_fixed_list():
  """Any dotted key of the config is sweepable, including ones added by a config file."""
  config = base()
  with config.unlocked():
    config.model.extra = ml_collections.ConfigDict({"width": 3})
  (axis,) = grid.parse_grid(config, ["model.extra.width=4,5"])
  assert axis == grid.Axis(("model.extra.width",), (4, 5))
  assert grid.points([axis]) == [{"model.extra.width": 4}, {"model.extra.width": 5}]


# ----------------------------------------------------------------------------- zipped axes


def test_keys_varied_together_share_an_axis_each_element_parsed_for_its_key():
  axes = grid.parse_grid(base(), ["loss.capacity_max,loss.capacity_steps=(5,1000),(25.5,5000)",
                                  "seed=0,1"])
  assert axes[0] == grid.Axis(("loss.capacity_max", "loss.capacity_steps"),
                              ((5.0, 1000), (25.5, 5000)))
  assert [type(v) for v in axes[0].values[0]] == [float, int]
  assert grid.points(axes) == [
      {"loss.capacity_max": c, "loss.capacity_steps": n, "seed": s}
      for c, n in ((5.0, 1000), (25.5, 5000)) for s in (0, 1)]


@pytest.mark.parametrize("spec,fragment", [
    ("loss.capacity_max,loss.capacity_steps=5,6", "must be a bracketed tuple of 2 values"),
    ("loss.capacity_max,loss.capacity_steps=(5,6,7)", "must be a bracketed tuple of 2 values"),
    ("loss.beta,loss.beta=(1,2)", "names a key twice"),
    ("loss.capacity_max,loss.capacity_steps=(5,x)", "does not parse"),
])
def test_bad_zipped_axes_fail_in_one_line(spec, fragment):
  with pytest.raises(ValueError, match=fragment) as info:
    grid.parse_grid(base(), [spec])
  assert "\n" not in str(info.value)


def test_a_zipped_key_cannot_also_have_its_own_axis():
  with pytest.raises(ValueError, match="'loss.capacity_max' appears twice"):
    grid.parse_grid(base(), ["loss.capacity_max,loss.capacity_steps=(5,1000)",
                             "loss.capacity_max=3"])


def test_quotes_that_protect_commas_are_removed_as_the_shell_would():
  (axis,) = grid.parse_grid(base(), ["data.path='a,b.npz',c.npz,\"d.npz\""])
  assert axis.values == ("a,b.npz", "c.npz", "d.npz")
