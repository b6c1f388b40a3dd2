"""Experiment configs, their validation, and one-line errors before any compilation."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import checkpointing, config_utils, data, models, train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for experiments.configs
from experiments.configs import (
  betavae_dsprites,
  cvae_mnist,
  hvae_mnist,
  vae_mnist,
)

CONFIGS = {"betavae_dsprites": betavae_dsprites, "vae_mnist": vae_mnist,
           "cvae_mnist": cvae_mnist, "hvae_mnist": hvae_mnist}
ALL_PRESETS = [(name, preset) for name, module in CONFIGS.items() for preset in module.PRESETS]


@pytest.mark.parametrize("name,preset", ALL_PRESETS)
def test_every_preset_is_a_valid_training_config(name, preset):
  config = CONFIGS[name].get_config(preset)
  for key in config_utils.REQUIRED_TOP_LEVEL:
    assert key in config
  config_utils.validate_config(
      config, model_names=models.MODELS, dataset_names=data.DATASETS)
  # The groups go to their registries as they are (no stray keys).
  train.loss_settings_from_config(config)
  models.create_model(config.model, (64, 64, 1) if "dsprites" in name else (28, 28, 1),
                      num_classes=10)


def test_betavae_default_is_the_disentanglement_lib_setting():
  config = betavae_dsprites.get_config()
  assert (config.num_steps, config.batch_size, config.learning_rate) == (300_000, 64, 1e-4)
  assert (config.optimizer.b1, config.optimizer.b2, config.optimizer.eps) == (0.9, 0.999, 1e-8)
  assert config.model.name == "conv_vae" and config.model.latent_dim == 10
  assert config.model.likelihood == "bernoulli"
  assert config.data.name == "dsprites_procedural"
  assert config.optimizer.grad_clip_norm == 0.0 and config.optimizer.warmup_steps == 0
  cpu = betavae_dsprites.get_config("cpu")
  assert cpu.num_steps < 5_000 and cpu.learning_rate > config.learning_rate
  assert cpu.loss.beta == config.loss.beta


def test_mnist_default_reads_the_shared_npz_through_the_data_default():
  config = vae_mnist.get_config()
  assert config.data.name == "mnist_npz" and config.data.path is None
  assert vae_mnist.get_config("tfds").data.name == "mnist"
  assert vae_mnist.get_config("binarized").data.name == "binarized_mnist"


@pytest.mark.parametrize("module", [betavae_dsprites, vae_mnist])
def test_unknown_preset_is_one_clear_error(module):
  with pytest.raises(ValueError, match=r"Unknown config preset 'nope'; known presets: ''"):
    module.get_config("nope")


def _tiny_dataset():
  rng = np.random.default_rng(0)
  split = data.SplitArrays((rng.random((32, 4, 4, 1)) < 0.5).astype(np.float32), binary=True)
  return data.ArrayDataset("tiny", {"train": split, "test": split}, image_shape=(4, 4, 1))


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
    ("loss.beta", -1.0, ValueError, "beta=-1.0 is negative"),
    ("num_steps", 0, ValueError, "num_steps=0 must be > 0"),
    ("batch_size", -4, ValueError, "batch_size=-4 must be > 0"),
    ("batch_size", 2.5, ValueError, "batch_size=2.5 must be an integer"),
    ("learning_rate", 0.0, ValueError, "learning_rate=0.0 must be > 0"),
    ("eval_every", -1, ValueError, "eval_every=-1 must be >= 0"),
    ("loss.betta", 2.0, KeyError, "Unknown config key 'loss.betta'; the keys of 'loss' are"),
    ("nmu_steps", 2, KeyError, "Unknown config key 'nmu_steps'"),
    ("optimizer.b2", 1.0, ValueError, r"optimizer.b2=1.0 must be in \[0, 1\)"),
    ("model.latent_dim", 0, ValueError, "latent_dim must be an int >= 1"),
    ("model.likelihood", "poisson", ValueError, "poisson"),
    ("loss.free_bits_groups", (0, 1), ValueError, "needs one group id per latent dimension"),
    ("eval.split", "validation", ValueError, "eval.split='validation' is not a split"),
]


@pytest.mark.parametrize("key,value,error,message", BAD_CONFIGS)
def test_bad_config_fails_before_compiling(key, value, error, message, tmp_path, monkeypatch):
  config = vae_mnist.get_config("test")
  _set(config, key, value)

  def no_compiling(*args, **kwargs):
    raise AssertionError("jax.jit was called before the config error was raised")

  monkeypatch.setattr(jax, "jit", no_compiling)
  dataset = None if key == "data.name" else _tiny_dataset()
  with pytest.raises(error, match=message) as info:
    train.train_and_evaluate(config, tmp_path / "run", dataset=dataset, progress=False)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists()


def _save_fake_checkpoint(workdir, config):
  state = {"step": jnp.zeros((), jnp.int32)}
  with checkpointing.Checkpointer(workdir / checkpointing.CHECKPOINT_DIR) as ckpt:
    ckpt.save(3, state, {"config": config_utils.to_dict(config), "data_position": 3})


def test_workdir_from_another_config_is_refused_naming_the_keys(tmp_path, monkeypatch):
  old = vae_mnist.get_config("test")
  _save_fake_checkpoint(tmp_path, old)
  new = vae_mnist.get_config("test")
  new.loss.beta = 4.0
  new.model.latent_dim = 7
  new.num_steps = 100  # may change when continuing
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(ValueError, match="from a different config") as info:
    train.train_and_evaluate(new, tmp_path, dataset=_tiny_dataset(), progress=False)
  message = str(info.value)
  assert "loss.beta: 1.0 in the checkpoint, 4.0 now" in message
  assert "model.latent_dim: 4 in the checkpoint, 7 now" in message
  assert "num_steps" not in message.split("(only")[0]


def test_config_diff_ignores_only_resumable_keys():
  old = vae_mnist.get_config("test")
  new = vae_mnist.get_config("test")
  new.num_steps, new.log_every, new.eval_every, new.checkpoint_every = 99, 7, 7, 7
  new.eval.num_batches = 3
  new.figures.enabled = False
  new.data.path = "/elsewhere/mnist10k.npz"
  assert config_utils.config_diff(old, new) == []
  new.learning_rate = 0.5
  new.model.hidden_sizes = (8, 8)
  assert config_utils.config_diff(old, new) == [
      ("learning_rate", 1e-3, 0.5), ("model.hidden_sizes", [32], [8, 8])]


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True,
      text=True, timeout=120, check=False)


def test_cli_unknown_override_key_is_one_line(tmp_path):
  result = _cli("--config=experiments/configs/vae_mnist.py:test", f"--workdir={tmp_path}/w",
                "--config.loss.betta=2")
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: the config has no key 'betta'")
  assert 'Did you mean "beta"' in lines[0]


def test_cli_negative_beta_is_one_line(tmp_path):
  result = _cli("--config=experiments/configs/betavae_dsprites.py:test",
                f"--workdir={tmp_path}/w", "--config.loss.beta=-1")
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: Loss setting beta=-1.0 is negative; it must be >= 0."], result.stderr
  assert not (tmp_path / "w").exists()


def test_configs_without_the_disentanglement_group_stay_valid():
  """Runs saved before the group existed still load (absent = disabled)."""
  config = betavae_dsprites.get_config("test")
  assert config_utils.disentanglement_enabled(betavae_dsprites.get_config())
  del config["disentanglement"]
  config_utils.validate_config(config)
  assert not config_utils.disentanglement_enabled(config)


def test_disentanglement_needs_ground_truth_factors():
  from test_train import tiny_config, tiny_dataset  # pylint: disable=g-import-not-at-top

  config = tiny_config()
  config.disentanglement.enabled = True
  with pytest.raises(config_utils.ConfigError, match="ground-truth factors"):
    train.Run(config, dataset=tiny_dataset())
