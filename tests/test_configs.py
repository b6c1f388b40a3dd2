"""Experiment configs, their validation, and one-line errors before any compilation."""

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from vaejax import config as config_lib
from vaejax import data, models
from vaejax.sweeps import grid as grid_lib
from vaejax.sweeps import report
from vaejax.training import checkpoint, loop
from vaejax.training.step import hyperparams_from_config, loss_settings_from_config
from vaejax.types import TOKENS, DataSpec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for experiments.configs
from experiments import configs as configs_pkg  # noqa: E402  (after the path insert)
from experiments.configs import (  # noqa: E402
    annealedvae_dsprites,
    betatcvae_dsprites,
    betavae_dsprites,
    vae_mnist,
)

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

# Every config file of experiments/configs/ (common.py holds helpers, not a config).
CONFIGS = {name: importlib.import_module(f"experiments.configs.{name}")
           for _, name, _ in pkgutil.iter_modules(configs_pkg.__path__) if name != "common"}
ALL_PRESETS = [(name, preset) for name, module in sorted(CONFIGS.items())
               for preset in module.PRESETS]
STUDIES = {  # config -> (swept key, disentanglement_lib's values)
    "betavae_dsprites": ("loss.beta", (1, 2, 4, 6, 8, 16)),
    "betatcvae_dsprites": ("loss.tc_beta", (1, 2, 4, 6, 8, 10)),
    "annealedvae_dsprites": ("loss.capacity_max", (5, 10, 25, 50, 75, 100)),
}


def test_every_config_file_has_the_full_and_test_presets():
  assert set(STUDIES) | {"vae_mnist", "cvae_mnist", "hvae_mnist"} <= set(CONFIGS)
  for module in CONFIGS.values():
    assert {"", "test"} <= set(module.PRESETS)


@pytest.mark.parametrize("name,preset", ALL_PRESETS)
def test_every_preset_validates_and_builds_its_model_and_grid(name, preset):
  config = CONFIGS[name].get_config(preset)
  config_lib.validate(config, model_names=models.MODELS, dataset_names=data.DATASETS)
  hyperparams_from_config(config)  # the loss and optimizer settings are in range
  image_shape = (64, 64, 1) if "dsprites" in config.data.name else (28, 28, 1)
  spec = (DataSpec.tokens(5_000, 22) if models.MODELS[config.model.name].data_kind == TOKENS
          else DataSpec.images(image_shape, 10))
  model = models.create_model(config.model, spec)
  assert model.latent_dim >= 1
  # Its default sweep grid parses and every point is a valid single run.
  points = grid_lib.points(grid_lib.parse_grid(config, config.grid))
  for point in points:
    run = grid_lib.apply_point(config, point)
    config_lib.validate(run, model_names=models.MODELS, dataset_names=data.DATASETS)
    hyperparams_from_config(run)


def test_betavae_default_is_the_disentanglement_lib_setting():
  config = betavae_dsprites.get_config()
  assert (config.num_steps, config.batch_size, config.learning_rate) == (300_000, 64, 1e-4)
  assert (config.optimizer.b1, config.optimizer.b2, config.optimizer.eps) == (0.9, 0.999, 1e-8)
  assert config.model.name == "conv_vae" and config.model.latent_dim == 10
  assert config.model.likelihood == "bernoulli"
  assert config.data.name == "dsprites_procedural"
  assert config.optimizer.grad_clip_norm == 0.0 and config.optimizer.warmup_steps == 0
  assert config.evals.disentanglement.at_end and config.evals.disentanglement.preset == "dlib"
  assert tuple(config.evals.disentanglement.metrics) == ()  # all six
  assert config.loss.beta == 4.0 and config.seed == 0  # experiments.train's single model
  cpu = betavae_dsprites.get_config("cpu")
  assert cpu.num_steps < 5_000 and cpu.learning_rate > config.learning_rate
  assert cpu.loss.beta == config.loss.beta and cpu.evals.disentanglement.preset == "cpu"


def _axes(config):
  return {a.key: a.values for a in grid_lib.parse_grid(config, config.grid)}


@pytest.mark.parametrize("name", STUDIES)
def test_study_configs_carry_the_dlib_grids(name):
  key, dlib_values = STUDIES[name]
  module = CONFIGS[name]
  full, smoke, test = (module.get_config(p) for p in ("", "cpu_smoke", "test"))
  assert list(_axes(full)) == [key, "seed"]  # the swept key first, seeds fastest
  assert _axes(full)[key] == tuple(float(v) for v in dlib_values)
  assert len(_axes(full)["seed"]) >= 3
  assert (full.num_steps, full.batch_size, full.learning_rate) == (300_000, 64, 1e-4)
  assert (full.model.name, full.model.latent_dim, full.data.name) == (
      "conv_vae", 10, "dsprites_procedural")
  assert full.evals.disentanglement.at_end and full.evals.disentanglement.preset == "dlib"
  assert report.budget_label(full, 5).startswith("DLIB BUDGET: 300000 steps")
  # SMOKE SCALE keeps the 6 values, with 2 seeds and the reduced metric counts.
  assert _axes(smoke) == {key: _axes(full)[key], "seed": (0, 1)}
  assert smoke.evals.disentanglement.preset == "cpu" and smoke.num_steps < full.num_steps
  assert report.budget_label(smoke, 2).startswith("REDUCED BUDGET: ")
  points = grid_lib.points(grid_lib.parse_grid(smoke, smoke.grid))
  assert len(points) == 12
  assert points[0] == {key: float(dlib_values[0]), "seed": 0}
  assert points[-1] == {key: float(dlib_values[-1]), "seed": 1}
  assert _axes(test) == {key: _axes(full)[key][:2], "seed": (0,)}


@pytest.mark.parametrize("name,value,expected", [
    ("betavae_dsprites", 6.0, {"beta": 6.0, "tc_beta": 1.0, "capacity_gamma": 0.0}),
    ("betatcvae_dsprites", 6.0, {"beta": 1.0, "tc_beta": 6.0, "dataset_size": 737_280}),
    ("annealedvae_dsprites", 25.0, {"beta": 0.0, "capacity_gamma": 1000.0,
                                    "capacity_max": 25.0, "capacity_steps": 100_000}),
])
def test_a_study_point_sets_the_methods_loss_and_leaves_the_template(name, value, expected):
  config = CONFIGS[name].get_config()
  key = STUDIES[name][0]
  run = grid_lib.apply_point(config, {key: value, "seed": 3})
  settings = loss_settings_from_config(run)
  assert {k: getattr(settings, k) for k in expected} == expected
  assert run.seed == 3 and config.seed == 0  # a copy: the template is unchanged


def test_beta_tc_one_runs_as_a_program_of_its_own():
  tc = betatcvae_dsprites.get_config()
  points = grid_lib.points(grid_lib.parse_grid(tc, tc.grid))
  groups = grid_lib.groups(tc, points)
  seeds = len(_axes(tc)["seed"])
  assert [g.models for g in groups] == [tuple(range(seeds)), tuple(range(seeds, 6 * seeds))]
  assert {points[i]["loss.tc_beta"] for i in groups[0].models} == {1.0}


def test_an_evaluator_may_be_removed_or_added_under_another_name():
  config = betavae_dsprites.get_config("test")
  del config.evals["disentanglement"]  # absent = not run
  config.evals.dis = dict(config_lib.base_config().evals.disentanglement, at_end=True)
  config_lib.validate(config, model_names=models.MODELS, dataset_names=data.DATASETS)
  assert report.budget_label(config, 1).startswith("REDUCED BUDGET")  # found by its type


def test_annealed_capacity_steps_follow_an_overridden_num_steps():
  config = annealedvae_dsprites.get_config("cpu_smoke")
  assert config.loss.capacity_steps == 2_000 // 3
  config.num_steps = 900  # what --config.num_steps=900 does
  assert config.loss.capacity_steps == 300
  assert grid_lib.apply_point(config, {"num_steps": 1200}).loss.capacity_steps == 400
  # Through the command line (ml_collections' override of a config file).
  path = REPO / "experiments/configs/annealedvae_dsprites.py"
  argv = ["prog", f"--config={path}:cpu_smoke", "--config.num_steps=600"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.loss.capacity_steps == 200
  assert config_lib.to_dict(flag_values.config)["loss"]["capacity_steps"] == 200


def test_mnist_default_reads_the_shared_npz_through_the_data_default():
  config = vae_mnist.get_config()
  assert config.data.name == "mnist_npz" and config.data.path is None
  assert vae_mnist.get_config("tfds").data.name == "mnist"
  assert vae_mnist.get_config("binarized").data.name == "binarized_mnist"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unknown_preset_is_one_clear_error(name):
  with pytest.raises(ValueError, match=r"^Unknown config preset 'nope'; known presets: ''") as e:
    CONFIGS[name].get_config("nope")
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- bad configs


def _tiny_dataset(ground_truth=None):
  rng = np.random.default_rng(0)
  split = data.SplitArrays((rng.random((32, 4, 4, 1)) < 0.5).astype(np.float32), binary=True)
  return data.ArrayDataset("tiny", {"train": split, "test": split}, image_shape=(4, 4, 1),
                           ground_truth=ground_truth)


def _set(config, dotted, value):
  """Sets a (possibly new) key to a value of any type, as a careless user might."""
  *groups, last = dotted.split(".")
  for group in groups:
    config = config[group]
  with config.ignore_type():
    config[last] = value


BAD_CONFIGS = [
    ("model.name", "nope", ValueError, "Unknown model name 'nope'; known model names: conv_cvae"),
    ("data.name", "nope", ValueError, "Unknown data name 'nope'; known data names:"),
    ("loss.beta", -1.0, ValueError, "Loss setting beta=-1.0 is negative"),
    ("num_steps", 0, ValueError, "num_steps=0 must be > 0"),
    ("batch_size", -4, ValueError, "batch_size=-4 must be > 0"),
    ("batch_size", 2.5, ValueError, "batch_size=2.5 must be an integer"),
    ("batch_size", 64, ValueError, "batch_size=64 exceeds the 32 training examples of tiny"),
    ("learning_rate", 0.0, ValueError, "learning_rate=0.0 must be > 0"),
    ("seed", 2**32, ValueError, r"seed=4294967296 must be < 2\*\*32"),
    ("evals.elbo.every", -1, ValueError, "evals.elbo.every=-1 must be >= 0"),
    ("evals.elbo.at_end", "yes", ValueError, "evals.elbo.at_end='yes' must be True or False"),
    ("evals.elbo.type", "nope", ValueError, "evals.elbo.type='nope' is not an evaluator type"),
    ("evals.elbo.typo", 1, KeyError, "Unknown config key 'evals.elbo.typo'"),
    ("evals.mine", {"type": "elbo"}, KeyError, r"The config lacks the key 'evals\.mine\."),
    ("evals.iwae.num_samples", 0, ValueError, "evals.iwae.num_samples=0 must be an int >= 1"),
    ("evals.figures.traversal_range", -1.0, ValueError,
     "evals.figures.traversal_range=-1.0 must be a number > 0"),
    ("evals.disentanglement.seed", -1, ValueError,
     "evals.disentanglement.seed=-1 must be an int >= 0"),
    ("evals.disentanglement.preset", "fast", ValueError,
     "evals.disentanglement.preset='fast' is not a preset"),
    ("evals.disentanglement.metrics", ("irs",), ValueError,
     r"evals.disentanglement.metrics: Unknown disentanglement metric\(s\) \['irs'\]"),
    ("evals.disentanglement.at_end", True, ValueError,
     "evals.disentanglement \\(disentanglement\\) needs a dataset with ground-truth factors"),
    ("eval.split", "validation", ValueError, "eval.split='validation' is not a split of 'tiny'"),
    ("eval.batch_size", 1000, ValueError, "eval.batch_size=1000 exceeds the 32 examples"),
    ("loss.betta", 2.0, KeyError, "Unknown config key 'loss.betta'; the keys of 'loss' are"),
    ("nmu_steps", 2, KeyError, "Unknown config key 'nmu_steps'"),
    ("sweep", {}, KeyError, "Unknown config key 'sweep'"),  # the old group
    ("optimizer.b2", 1.0, ValueError, r"optimizer.b2=1.0 must be in \[0, 1\)"),
    ("optimizer.grad_clip_norm", -1.0, ValueError, "grad_clip_norm=-1.0 must be >= 0"),
    ("model.latent_dim", 0, ValueError, "latent_dim must be an int >= 1"),
    ("model.likelihood", "poisson", ValueError, "poisson"),
    ("model.name", "mlp_cvae", ValueError, "'mlp_cvae' is a conditional model"),
    ("loss.free_bits_groups", (0, 1), ValueError, "needs one group id per latent dimension"),
    ("execution.strategy", "nope", ValueError, "execution.strategy='nope' is not a strategy"),
    ("execution.chunk_size", -1, ValueError, "execution.chunk_size=-1 must be >= 0"),
    ("execution.memory_budget_gb", 1e-9, ValueError, "1 models do not fit"),
    ("grid", (1,), ValueError, r"grid=\(1,\) must be a tuple of 'KEY=V1,V2,\.\.\.' strings"),
    ("grid", "loss.beta=1,4", ValueError, "must be a tuple of 'KEY=V1,V2,...' strings"),
]


@pytest.mark.parametrize("key,value,error,message", BAD_CONFIGS,
                         ids=[f"{k}={v!r}" for k, v, *_ in BAD_CONFIGS])
def test_bad_config_fails_before_compiling(key, value, error, message, tmp_path, no_compiling):
  config = vae_mnist.get_config("test")
  _set(config, key, value)
  dataset = None if key == "data.name" else _tiny_dataset()
  with pytest.raises(error, match=message) as info:
    loop.train_and_evaluate(config, tmp_path / "run", dataset=dataset, progress=False)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists()


def test_a_valid_config_gets_past_the_checks(tmp_path, no_compiling):
  """The table's failures are the bad values': the unchanged config reaches compilation."""
  with pytest.raises(AssertionError, match="a jitted function (ran|was lowered)"):
    loop.train_and_evaluate(vae_mnist.get_config("test"), tmp_path / "run",
                            dataset=_tiny_dataset(), progress=False)


# ----------------------------------------------------------------------------- resuming


def _save_fake_checkpoint(workdir, config):
  state = {"step": jnp.zeros((), jnp.int32)}
  with checkpoint.Checkpointer(workdir / checkpoint.CHECKPOINT_DIR) as ckpt:
    ckpt.save(3, state, {"config": config_lib.to_dict(config), "data_position": 3,
                         "points": [{}]})
  (workdir / loop.CONFIG_FILE).write_text(json.dumps(config_lib.to_dict(config)))


def _refused_run(workdir):
  old = vae_mnist.get_config("test")
  _save_fake_checkpoint(workdir, old)
  new = vae_mnist.get_config("test")
  new.loss.beta = 4.0
  new.model.latent_dim = 7
  new.num_steps = 100  # may change when continuing
  with pytest.raises(ValueError, match="from a different config") as info:
    loop.train_and_evaluate(new, workdir, dataset=_tiny_dataset(), progress=False)
  return old, info


def test_workdir_from_another_config_is_refused_naming_the_keys(tmp_path, no_compiling):
  _, info = _refused_run(tmp_path)
  message = str(info.value)
  assert "\n" not in message
  assert "loss.beta: 1.0 in the checkpoint, 4.0 now" in message
  assert "model.latent_dim: 4 in the checkpoint, 7 now" in message
  assert "num_steps" not in message.split("(only")[0]


def test_a_refused_run_leaves_the_workdirs_config_json_alone(tmp_path, no_compiling):
  old, _ = _refused_run(tmp_path)
  saved = json.loads((tmp_path / loop.CONFIG_FILE).read_text())
  assert saved == config_lib.to_dict(old)


def _resumable_pattern(key):
  """RESUMABLE_KEYS, written out: run length, reporting and monitoring, file places,
  placement."""
  return re.fullmatch(
      r"num_steps|log_every|checkpoint_every|eval\..+|evals\..+|monitor\..+|grid|execution\..+|"
      r"data\.path|data\.data_dir|optimizer\.max_consecutive_skips", key) is not None


BASE_KEYS = sorted(config_lib.flatten(config_lib.to_dict(config_lib.base_config())))


@pytest.mark.parametrize("key", BASE_KEYS)
def test_config_diff_ignores_only_resumable_keys(key):
  old = config_lib.to_dict(config_lib.base_config())
  new = json.loads(json.dumps(old))
  *groups, leaf = key.split(".")
  node = new
  for group in groups:
    node = node[group]
  before = node[leaf]
  node[leaf] = "changed"
  diff = config_lib.config_diff(old, new)
  assert diff == ([] if _resumable_pattern(key) else [(key, before, "changed")])


def test_config_diff_names_keys_present_on_one_side_only():
  old = config_lib.to_dict(vae_mnist.get_config("test"))
  new = json.loads(json.dumps(old))
  new["loss"]["extra"] = 1.0
  del new["model"]["dtype"]
  new["evals"]["mine"] = {"type": "elbo"}  # evals.* may change
  assert config_lib.config_diff(old, new) == [
      ("loss.extra", "<absent>", 1.0), ("model.dtype", "float32", "<absent>")]


# ----------------------------------------------------------------------------- the CLI


def _cli(module, *args):
  return subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO, capture_output=True,
      text=True, timeout=120, check=False)


def _one_error_line(result):
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ")
  return lines[0]


def test_cli_unknown_override_key_is_one_line(tmp_path):
  line = _one_error_line(_cli("train", "--config=experiments/configs/vae_mnist.py:test",
                              f"--workdir={tmp_path}/w", "--config.loss.betta=2"))
  assert line.startswith("error: the config has no key 'betta'")
  assert 'Did you mean "beta"' in line
  assert not (tmp_path / "w").exists()


def test_cli_negative_beta_is_one_line(tmp_path):
  line = _one_error_line(_cli("train", "--config=experiments/configs/betavae_dsprites.py:test",
                              f"--workdir={tmp_path}/w", "--config.loss.beta=-1"))
  assert line == "error: Loss setting beta=-1.0 is negative; it must be >= 0."
  assert not (tmp_path / "w").exists()


SWEEP_ERRORS = [
    (["--grid=loss.beta=1,x"],
     "error: Grid value 'x' for 'loss.beta' does not parse as its type"),
    (["--config.loss.beta=2", "--grid=loss.beta=1,4"],
     "error: Grid key 'loss.beta' is also set by --config.loss.beta; set it in one place."),
    (["--grid=loss.beta=1", "--grid=loss.beta=2"],
     "error: Grid key 'loss.beta' appears twice; give each key one --grid."),
    (["--grid=loss.betta=1,2"],
     "error: Grid key 'loss.betta' is not a value of the training config"),
]


def test_cli_bad_preset_is_one_line(tmp_path):
  line = _one_error_line(_cli("sweep", "--config=experiments/configs/betavae_dsprites.py:nope",
                              f"--workdir={tmp_path}/w"))
  assert ("Unknown config preset 'nope'; known presets: '', 'cpu', 'cpu_smoke', 'cpu_mid', "
          "'test'") in line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,expected", SWEEP_ERRORS, ids=["value", "overridden", "repeated",
                                                            "unknown"])
def test_cli_sweep_grid_errors_are_one_line(args, expected, tmp_path):
  line = _one_error_line(_cli("sweep", "--config=experiments/configs/sweep_beta_mnist.py:test",
                              f"--workdir={tmp_path}/w", *args))
  assert line.startswith(expected)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("config_arg,workdir_arg,expected", [
    ("--config=experiments/configs/nope.py", "w",
     "error: the config file experiments/configs/nope.py does not exist; give a config file "
     "such as experiments/configs/vae_mnist.py[:PRESET]."),
    ("--config={noget}", "w", "error: the config file {noget} defines no get_config()"),
    ("--config=experiments/configs/vae_mnist.py:test", "",
     "error: --workdir is empty; give the directory for logs and checkpoints"),
], ids=["missing config file", "no get_config", "empty workdir"])
def test_cli_bad_paths_are_one_line_before_anything_is_written(config_arg, workdir_arg, expected,
                                                               tmp_path):
  noget = tmp_path / "noget.py"
  noget.write_text("x = 1\n")
  workdir = f"{tmp_path}/{workdir_arg}" if workdir_arg else ""
  line = _one_error_line(_cli("train", config_arg.format(noget=noget), f"--workdir={workdir}"))
  assert line.startswith(expected.format(noget=noget))
  assert not (tmp_path / "w").exists()
