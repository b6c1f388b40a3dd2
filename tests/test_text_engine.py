"""Text VAEs through the one engine: the Markov-chain invariant, sweep = single run, resume,
the text evaluator's numbers and one clear error per bad input, before compiling.

Corpora are sentences of a small known Markov chain (``text_fixtures.MarkovChain``), written
as ``text_lines`` files. The references are written here: the chain's exact NLL, a plain
jitted train step over the dataset's batches with its own initialisation and keys, and a
numpy log-softmax of the language model's logits.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaejax
from vaejax import data, models, objectives
from vaejax.training import checkpoint, faults, loop, writers
from vaejax.training.interrupt import Interrupted
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import TrainState
from vaejax.training.step import Hyperparams, make_train_step

from text_fixtures import MarkovChain, write_text_lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from experiments import cli  # noqa: E402
from experiments.configs import textvae  # noqa: E402

CHAIN = MarkovChain.random(num_words=5, end_probability=0.25, max_words=8, seed=0)
# The documented streams (vaejax.rng): fold_in(PRNGKey(seed), stream).
INIT, SAMPLE = 0, 1
TINY_VAE = {"name": "lstm_vae", "embedding_size": 8, "hidden_size": 16, "latent_dim": 4,
            "word_keep": 0.5}  # word dropout on: its RNG is part of what must agree


def corpus(directory, train, valid, test, seed=0):
  sizes = {"train": train, "valid": valid, "test": test}
  return write_text_lines(directory, {s: CHAIN.sample(n, seed=seed + i)
                                      for i, (s, n) in enumerate(sizes.items())})


def text_config(path, model=TINY_VAE, **overrides):
  config = textvae.get_config("test")
  config.data.update(name="text_lines", path=str(path), max_vocab=None)
  config.model.update(model)
  config.learning_rate = 1e-2
  for key, value in overrides.items():
    group, _, leaf = key.rpartition(".")
    (config[group] if group else config)[leaf] = value
  return config


def rows_of(workdir):
  """Per model, its logged rows (timing left out) in step order."""
  per_model = {}
  for row in writers.read_jsonl(Path(workdir) / writers.METRICS_FILE):
    row = {k: v for k, v in row.items() if k not in ("steps_per_sec", "eval/seconds")}
    per_model.setdefault(row.get("model", 0), []).append(row)
  return [per_model[m] for m in sorted(per_model)]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
  return corpus(tmp_path_factory.mktemp("small"), train=64, valid=8, test=24)


# ----------------------------------------------------------------------------- the invariant


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory):
  """``lstm_lm`` trained by the engine on 3,000 sentences of the chain (250 steps)."""
  root = tmp_path_factory.mktemp("markov")
  path = corpus(root / "data", train=3000, valid=100, test=1000, seed=10)
  config = text_config(path, {"name": "lstm_lm", "embedding_size": 16, "hidden_size": 32,
                              "word_keep": 1.0}, learning_rate=2e-2,
                       num_steps=250, batch_size=128, log_every=125, checkpoint_every=250)
  config.evals.text.num_sentences = 0  # numbers only: no decoding programs to compile
  loop.train_and_evaluate(config, root / "run", progress=False)
  return config, root / "run", data.load(config.data)


def test_the_language_model_reaches_the_chains_exact_nll_and_never_goes_below_it(trained_lm):
  """The exact −log p(x | len ≤ 8) of every test sentence from the chain's own tables; the
  trained LM's NLL (the text evaluator's, per sentence) may exceed it by a small margin
  and may not go below it beyond the noise of 1,000 sentences: below would mean that a
  position sees the token it predicts, or that padding or <bos> is scored."""
  _, run, dataset = trained_lm
  arrays = dataset.arrays("test")
  exact = np.asarray([CHAIN.nll(dataset.vocabulary.to_text(t).split()) for t in arrays.tokens])
  got = np.asarray(json.loads((run / "text.json").read_text())["nll_per_sentence"])
  excess = got - exact
  noise = 3 * excess.std(ddof=1) / np.sqrt(excess.size)  # 3 standard errors of the mean
  assert excess.mean() > -noise, (excess.mean(), noise)
  # 0.15 nats per sentence (3 % of the chain's 5.1): measured 0.08 ± 0.01 after these 250
  # steps; a model that has not learned the chain is nats away.
  assert excess.mean() < 0.15, (excess.mean(), exact.mean())


def test_the_evaluators_language_model_numbers_against_a_numpy_reference(trained_lm):
  """The LM's NLL is exact (every importance weight is p(x)): equal to the teacher-forced
  log-softmax of its logits summed over the scored tokens, computed here in float64; the
  perplexity is exp(Σ NLL / Σ scored tokens)."""
  config, run, dataset = trained_lm
  state, _, _ = checkpoint.restore_state(run / checkpoint.CHECKPOINT_DIR)
  params = jax.tree.map(lambda x: x[0], state["models"]["params"])
  model = models.create_model(config.model, dataset.spec)
  arrays = dataset.arrays("test")
  logits = np.asarray(model.apply({"params": params}, arrays.tokens,
                                  rngs={"sample": jax.random.key(0)}).likelihood[
                                      "categorical_logits"], np.float64)
  log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
      -1, keepdims=True)) - logits.max(-1, keepdims=True)
  picked = np.take_along_axis(log_softmax, arrays.tokens[..., None], -1)[..., 0]
  scored = np.arange(arrays.tokens.shape[1]) < arrays.lengths[:, None]
  want = -(picked * scored).sum(1)
  result = json.loads((run / "text.json").read_text())
  # float32 sums of ≤ 9 log-probabilities of a few nats each: ~1e-5 relative.
  np.testing.assert_allclose(result["nll_per_sentence"], want, rtol=1e-4, atol=1e-4)
  assert result["num_tokens"] == arrays.lengths.sum() and result["num_samples"] == 1
  np.testing.assert_allclose(result["ppl"], np.exp(want.sum() / arrays.lengths.sum()),
                             rtol=1e-4)
  (row,) = [r for r in writers.read_jsonl(run / writers.METRICS_FILE) if "eval/nll" in r]
  assert row["eval/nll"] == pytest.approx(np.mean(result["nll_per_sentence"]), rel=1e-12)
  assert (row["eval/kl"], row["eval/mi"], row["eval/active_units"]) == (0.0, 0.0, 0)
  assert row["kl_per_dim"] == [] and row["eval/kl_per_dim"] == []
  assert row["eval/num_sentences"] == len(arrays) == 1000


# ----------------------------------------------------------------------------- one step


def test_a_text_step_trains_on_the_elbo_with_word_dropout_from_the_documented_key(
    small_corpus):
  """The engine's train step of a token model: the ELBO of z ~ q drawn with key
  fold_in(state key, t) and word dropout with fold_in(that key, 1), computed here."""
  config = text_config(small_corpus)
  dataset = data.load(config.data)
  programs = reference_programs(config, dataset)
  model, optimizer = programs["model"], programs["optimizer"]
  batch = dataset.get_batch("train", 0, 8, 0)
  params = programs["init"](jax.random.PRNGKey(0), jax.random.PRNGKey(1))
  key = jax.random.PRNGKey(7)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=jnp.int32(3), params=params, opt_state=optimizer.init(params),
                     key=key, skips=zero, consecutive_skips=zero,
                     longest_skip_streak=zero, grad_norm_skips=zero)
  settings = objectives.LossSettings(*(jnp.float32(v) for v in objectives.DEFAULT_SETTINGS))
  new, metrics = programs["step"](
      state, batch, Hyperparams(settings, jnp.float32(0.01), jnp.float32(0)))

  sample_key = jax.random.fold_in(key, 3)

  @jax.jit
  def reference(params):  # the forward pass alone: the update is the image models' (test_step)
    def loss(rngs):
      outputs = model.apply({"params": params}, batch["tokens"], rngs=rngs)
      return objectives.elbo_loss(batch["tokens"], outputs, settings, 3)[0]
    return (loss({"sample": sample_key, "dropout": jax.random.fold_in(sample_key, 1)}),
            loss({"sample": sample_key}))

  with_dropout, without_dropout = reference(params)
  # float32: the same operations, compiled as two programs (~1e-6 relative).
  np.testing.assert_allclose(metrics["loss"], with_dropout, rtol=1e-5)
  assert abs(float(without_dropout) - float(with_dropout)) > 1e-3  # word dropout ran
  assert int(new.step) == 4 and not np.array_equal(new.params["output_bias"],
                                                   params["output_bias"])


# ----------------------------------------------------------------------------- sweep = run


STEPS, BATCH = 6, 8
GRID = ["loss.warmup_steps=0,4", "seed=0,3"]
POINTS = [{"loss.warmup_steps": w, "seed": s} for w in (0, 4) for s in (0, 3)]


_PROGRAMS = {}


def reference_programs(config, dataset):
  """The reference's model, optimizer, jitted init ``(params key, sample key) -> params``
  and jitted train step, built once (the hyper-parameters are traced)."""
  if not _PROGRAMS:
    model = models.create_model(config.model, dataset.spec)
    tokens = jnp.zeros((1, dataset.max_length), jnp.int32)
    optimizer = make_optimizer()
    _PROGRAMS.update(
        model=model, optimizer=optimizer, step=jax.jit(make_train_step(model, optimizer)),
        init=jax.jit(lambda k1, k2: model.init({"params": k1, "sample": k2}, tokens)["params"]))
  return _PROGRAMS


def reference_run(config, point, dataset):
  """One model trained by a plain jitted step over the dataset's batches: its losses and
  final parameters."""
  programs = reference_programs(config, dataset)
  optimizer, step = programs["optimizer"], programs["step"]
  seed = point["seed"]
  root = jax.random.PRNGKey(seed)
  params_key, init_sample = jax.random.split(jax.random.fold_in(root, INIT))
  params = programs["init"](params_key, init_sample)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=optimizer.init(params),
                     key=jax.random.fold_in(root, SAMPLE), skips=zero, consecutive_skips=zero,
                     longest_skip_streak=zero, grad_norm_skips=zero)
  settings = objectives.LossSettings(**{f: jnp.float32(
      point.get(f"loss.{f}", config.loss[f])) for f in objectives.LossSettings._fields})
  hyper = Hyperparams(settings, jnp.float32(config.learning_rate), jnp.float32(0))
  losses = []
  for t in range(STEPS):
    state, metrics = step(state, dataset.get_batch("train", t, BATCH, seed), hyper)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


@pytest.fixture(scope="module")
def text_sweep(small_corpus, tmp_path_factory):
  config = text_config(small_corpus, num_steps=STEPS, batch_size=BATCH, log_every=1,
                       checkpoint_every=3)
  config.execution.strategy = "sequential"
  workdir = tmp_path_factory.mktemp("sweep")
  loop.train(config, workdir, grid=GRID, progress=False, write_report=False)
  return config, workdir


def test_an_lstm_vae_sweep_equals_independent_runs(text_sweep):
  """Each model against the reference loop. The engine runs the same step inside its own
  program (masking, a cond), where XLA may order the LSTM's float32 sums differently:
  measured ~1e-7 relative per step, hence the tolerance; the sweep model and its single
  run (the same programs) are compared bit for bit below."""
  config, workdir = text_sweep
  dataset = data.load(config.data)
  state, meta, _ = checkpoint.restore_state(workdir / checkpoint.CHECKPOINT_DIR)
  assert meta["points"] == POINTS
  for k, (rows, point) in enumerate(zip(rows_of(workdir), POINTS)):
    losses, params = reference_run(config, point, dataset)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in rows], losses, rtol=1e-5)
    warm = point["loss.warmup_steps"]
    np.testing.assert_allclose([r["kl_weight"] for r in rows],
                               [min(t / warm, 1.0) if warm else 1.0 for t in range(STEPS)])
    # 6 Adam steps of size ≤ 1e-2 from parameters that agree to ~1e-7: ≤ 1e-5 apart.
    jax.tree.map(lambda a, b, k=k: np.testing.assert_allclose(a[k], b, rtol=1e-4, atol=1e-5),
                 state["models"]["params"], params)


def test_the_single_run_is_the_sweep_model_with_its_values_evaluation_included(
    text_sweep, tmp_path):
  config, workdir = text_sweep
  run = config.copy_and_resolve_references()
  run.loss.warmup_steps, run.seed = 4, 3  # point 3
  loop.train_and_evaluate(run, tmp_path, progress=False)
  (single,) = rows_of(tmp_path)
  sweep = rows_of(workdir)[3]
  strip = ("model", "point", "active", "masked_at")
  assert single == [{k: v for k, v in r.items() if k not in strip} for r in sweep]
  assert {"eval/nll", "eval/ppl", "eval/mi", "eval/active_units"} <= set(single[-1])
  for name in ("reconstructions", "prior_samples", "homotopies"):
    assert (tmp_path / "figures" / f"{name}.txt").read_text() == (
        workdir / "models" / "m003" / "figures" / f"{name}.txt").read_text()
  # load_run builds the text model as training did and scores token batches.
  run = vaejax.load_run(tmp_path)
  tokens = run.dataset.arrays("test").tokens[:5]
  mean, _ = run.encode(tokens)
  assert mean.shape == (5, 4) and run.example_shape == (tokens.shape[1],)
  assert np.isfinite(run.elbo(tokens, jax.random.key(0))).all()
  with pytest.raises(ValueError, match="decodes token sequences"):
    run.decode(mean)
  with pytest.raises(ValueError, match=r"int token ids in \[0, "):
    run.encode(tokens.astype(np.float32))


def test_a_text_run_stopped_by_sigterm_resumes_exactly(text_sweep, tmp_path, monkeypatch):
  config, _ = text_sweep
  reference = tmp_path / "reference"
  loop.train_and_evaluate(config, reference, progress=False)
  monkeypatch.setenv(faults.ENV, "sigterm:step@2")
  with pytest.raises(Interrupted):
    loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  monkeypatch.delenv(faults.ENV)
  loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert rows_of(tmp_path / "run") == rows_of(reference)
  a, _, step_a = checkpoint.restore_state(tmp_path / "run" / checkpoint.CHECKPOINT_DIR)
  b, _, step_b = checkpoint.restore_state(reference / checkpoint.CHECKPOINT_DIR)
  assert step_a == step_b == STEPS
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_evaluators_text_outputs_and_numbers_hang_together(text_sweep):
  _, workdir = text_sweep
  results = [json.loads(line) for line in (workdir / loop.RESULTS_FILE).read_text().splitlines()]
  for k, row in enumerate(results):
    out = workdir / "models" / f"m{k:03d}"
    saved = json.loads((out / "text.json").read_text())
    nll = np.asarray(saved["nll_per_sentence"])
    assert nll.shape == (24,) and row["eval/nll"] == pytest.approx(nll.mean(), rel=1e-12)
    assert row["eval/elbo"] == pytest.approx(row["eval/recon"] - row["eval/kl"], rel=1e-6)
    assert len(row["eval/kl_per_dim"]) == 4 and row["eval/num_samples"] == 3
    recon = (out / "figures" / "reconstructions.txt").read_text().split("\n\n")
    assert len([r for r in recon if r.strip()]) == 3  # num_sentences of the test preset
    assert (out / "figures" / "homotopies.txt").read_text().count("# sentences") == 3
    assert "# sampled decodes" in (out / "figures" / "prior_samples.txt").read_text()


# ----------------------------------------------------------------------------- bad input


def _images():
  split = data.SplitArrays(np.zeros((16, 4, 4, 1), np.float32), binary=True)
  return data.ArrayDataset("tiny_images", {"train": split, "test": split}, image_shape=(4, 4, 1))


def _corpus_with(tmp_path, **splits):
  """A text_lines folder of the chain's sentences with some splits replaced by raw text
  (str) or bytes."""
  path = corpus(tmp_path / "c", train=32, valid=8, test=8)
  for split, content in splits.items():
    target = path / f"{split}.txt"
    if content is None:
      target.unlink()
    elif isinstance(content, bytes):
      target.write_bytes(content)
    else:
      target.write_text(content, encoding="utf-8")
  return path


BAD_INPUTS = [
    ("missing file", {"test": None}, {}, FileNotFoundError, r"test\.txt"),
    ("empty split", {"valid": "\n\n  \n"}, {}, ValueError,
     r"text_lines/valid has no sentences: .*valid\.txt holds only blank lines \(3\)"),
    ("non-UTF-8 line", {"train": b"w0 w1\nw2 \xff w3\n"}, {}, ValueError, "line 2"),
    ("vocabulary of 3 words", {"train": "w0 w1\nw2 w1\n"}, {}, ValueError,
     r"has 3 word\(s\) besides the special tokens.*at least 4 are needed"),
    ("image model on text", {}, {"model.name": "mlp_vae"}, ValueError,
     "Model 'mlp_vae' is built for images but the dataset describes token sequences"),
    ("word_keep 0", {}, {"model.word_keep": 0.0}, ValueError, r"model\.word_keep=0\.0"),
    ("word_keep 1.5", {}, {"model.word_keep": 1.5}, ValueError, r"model\.word_keep=1\.5"),
    ("binarised text", {}, {"data.binarize": "static"}, ValueError, "no pixels to binarise"),
    ("DReG", {}, {"loss.estimator": "dreg", "loss.num_importance_samples": 4}, ValueError,
     "estimator='dreg' does not apply to model 'lstm_vae'"),
    ("β-TC without a latent", {}, {"model.name": "lstm_lm", "loss.tc_beta": 2.0,
                                   "loss.dataset_size": 32}, ValueError, "needs a latent"),
    ("image figures of text", {}, {"evals.figures.at_end": True}, ValueError,
     r"evals\.figures \(figures\) draws images"),
]


@pytest.mark.parametrize("files,overrides,error,message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_text_input_is_one_error_before_compiling(files, overrides, error, message,
                                                      tmp_path, no_compiling):
  config = text_config(_corpus_with(tmp_path, **files))
  for key, value in overrides.items():
    group, _, leaf = key.rpartition(".")
    config[group][leaf] = value
  with pytest.raises(error, match=message) as info:
    loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "run").exists()


def test_a_text_model_on_images_and_the_text_evaluator_on_them_are_refused(tmp_path,
                                                                          no_compiling):
  config = text_config(tmp_path)  # the images are passed in
  with pytest.raises(ValueError, match="Model 'lstm_vae' is built for tokens but the dataset "
                                       r"describes images \(image_shape=\(4, 4, 1\)\)"):
    loop.train_and_evaluate(config, tmp_path / "a", dataset=_images(), progress=False)
  config.model.update(name="mlp_vae", latent_dim=2)
  config.eval.batch_size = 4
  with pytest.raises(ValueError, match=r"evals\.text \(text\) scores sequence models"):
    loop.train_and_evaluate(config, tmp_path / "b", dataset=_images(), progress=False)


def test_the_ptb_preset_without_its_files_is_one_input_error_of_one_line(tmp_path,
                                                                        no_compiling):
  """Where the files were looked for and where to get them. In process: the command line
  prints any of its input errors as ``error: `` + this one line (tests/test_configs.py)."""
  config = textvae.get_config("ptb")
  config.data.path = str(tmp_path)
  with pytest.raises(cli.INPUT_ERRORS) as info:
    loop.train_and_evaluate(config, tmp_path / "w", progress=False)
  assert isinstance(info.value, FileNotFoundError)
  line = cli.one_line(info.value)
  assert line == str(info.value) and f"{tmp_path}/ptb.train.txt" in line
  assert "simple-examples.tgz" in line
  assert not (tmp_path / "w").exists()
