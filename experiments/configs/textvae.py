r"""The LSTM VAE of Bowman et al. 2016 on text, and its language-model baseline.

``lstm_vae``: embedding 256, LSTM encoder 256 → 32 latents, LSTM decoder 256 conditioned
on z (initial state and every input), categorical logits over the vocabulary;
``--config.model.name=lstm_lm`` trains the same decoder without a latent (the language
model a collapsed VAE equals) with the same presets. At the end of training the ``text``
evaluator scores the whole test split (``eval/nll``, ``eval/ppl``, ``eval/kl``,
``eval/recon``, ``eval/elbo``, ``eval/mi``, ``eval/active_units``) and writes
reconstructions, prior samples and homotopies as ``figures/*.txt``.

Presets (``--config=experiments/configs/textvae.py:PRESET``):

* ``""``: Texar's PTB recipe (below) on Tiny Shakespeare; an accelerator job.
* ``"ptb"``: Texar's PTB setting (asyml/texar ``examples/vae_text``): embedding 256,
  LSTM 256, latent 32, batch 32, Adam 1e-3, KL weight from 0.1 to 1 over the first 10
  epochs (``loss.warmup_start=0.1``), word keep 0.5, 100 epochs, K = 500 importance
  samples; Mikolov's ``ptb.{train,valid,test}.txt`` in ``--config.data.path=DIR``
  (required; not shipped). An accelerator job (131,400 steps).
* ``"cpu"``: the Tiny Shakespeare demo for 2 CPU cores: embedding and LSTMs of 128 (a
  step costs ~0.4× the 256 model's), 32 latents, vocabulary 5,000, batch 32, 2,500 steps
  (3.5 epochs), K = 50 importance samples; its default grid is the
  posterior-collapse study (``experiments.sweep`` without ``--grid``): KL warm-up
  (0 or 1,250 steps) × free bits (0 or 0.1 nats per dimension) × 2 seeds, and the
  language model (2 seeds), README "Text VAEs and posterior collapse".
* ``"test"``: a tiny model for a few steps (tests).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

PTB_TRAIN_SENTENCES = 42_068  # ptb.train.txt (Mikolov)
SHAKESPEARE_TRAIN_SENTENCES = 22_956  # tiny_shakespeare's train split (max_length 22)
BATCH_SIZE = 32
CPU_STEPS = 2_500
CPU_WARMUP = 1_250  # the study's warm-up: the first half of training
CPU_FREE_BITS = 0.1  # nats per latent dimension (3.2 nats over 32)
# The collapse study: a plain VAE, warm-up, free bits, both, and the language model.
COLLAPSE_GRID = (
    "model.name,loss.warmup_steps,loss.free_bits="
    f"(lstm_vae,0,0),(lstm_vae,{CPU_WARMUP},0),(lstm_vae,0,{CPU_FREE_BITS}),"
    f"(lstm_vae,{CPU_WARMUP},{CPU_FREE_BITS}),(lstm_lm,0,0)",
    "seed=0,1",
)


def _epochs(num: int, sentences: int) -> int:
  """Steps of ``num`` epochs at batch 32 (the datasets drop each epoch's remainder)."""
  return num * (sentences // BATCH_SIZE)


def _texar(config: ml_collections.ConfigDict, sentences: int) -> None:
  """Texar's recipe: 100 epochs, KL weight 0.1 → 1 over 10 epochs, word keep 0.5."""
  config.num_steps = _epochs(100, sentences)
  config.loss.warmup_steps = _epochs(10, sentences)
  config.loss.warmup_start = 0.1
  config.model.word_keep = 0.5
  config.log_every = 200
  config.checkpoint_every = 5_000


def _full(config: ml_collections.ConfigDict) -> None:
  _texar(config, SHAKESPEARE_TRAIN_SENTENCES)


def _ptb(config: ml_collections.ConfigDict) -> None:
  config.data.name = "ptb"
  config.data.max_vocab = None  # PTB's own 10,000 words (its <unk> kept)
  config.data.max_length = None  # the longest sentence: no test sentence is ever cut
  _texar(config, PTB_TRAIN_SENTENCES)


def _cpu(config: ml_collections.ConfigDict) -> None:
  config.model.update(embedding_size=128, hidden_size=128)
  config.num_steps = CPU_STEPS
  config.log_every = 50
  config.checkpoint_every = 500
  # K = 50, not He et al.'s 500: 1,311 test sentences × 500 decoder passes would take
  # longer than training on 2 CPU cores (README); the language model's NLL is exact.
  config.evals.text.num_samples = 50
  config.grid = COLLAPSE_GRID


def _test(config: ml_collections.ConfigDict) -> None:
  config.num_steps = 6
  config.batch_size = 8
  config.log_every = 2
  config.checkpoint_every = 3
  config.data.max_vocab = 60
  config.model.update(embedding_size=8, hidden_size=16, latent_dim=4)
  config.evals.text.update(num_samples=3, chunk_size=3, batch_size=16, num_sentences=3,
                           homotopy_steps=3)
  config.eval.batch_size, config.eval.num_batches = 4, 1  # tiny corpora (tests)


PRESETS = {"": _full, "ptb": _ptb, "cpu": _cpu, "test": _test}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = common.get_base_config()
  config.batch_size = BATCH_SIZE
  config.learning_rate = 1e-3
  config.model.name = "lstm_vae"
  config.model.latent_dim = 32
  # The sequence models' keys (vaejax.models.sequence), so --config.model.KEY sets them.
  config.model.embedding_size = 256
  config.model.hidden_size = 256
  config.model.word_keep = 1.0
  config.data.name = "tiny_shakespeare"
  config.data.max_vocab = 5_000
  config.data.max_length = None  # the longest sentence of any split (22 for Shakespeare)
  # The text evaluator replaces the image ones: the whole test split, at the end.
  config.evals.elbo.update(every=0, at_end=False)
  config.evals.figures.at_end = False
  config.evals.text.at_end = True
  config.monitor.collapse_patience = 5
  return common.apply_preset(config, preset, PRESETS)
