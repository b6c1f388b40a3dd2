r"""PyTorch eager twin of vaejax's LSTM VAE (:mod:`vaejax.models.sequence`) and its train step.

The baseline of :mod:`experiments.benchmarks.text_step` (the optional ``bench`` extra).
Same architecture, loss and optimizer:

* encoder: ``nn.Embedding(V, E)``, ``nn.LSTM(E, H)``, its output at the ``<eos>``
  position (length − 1) → ``nn.Linear(H, 2d)`` = (μ, log σ²);
* decoder: ``nn.Embedding(V, E)`` of ``<bos>`` + tokens[:-1], z concatenated to every
  input, ``nn.LSTM(E + d, H)`` from ``c_0 = W_c z + b_c``, ``h_0 = tanh c_0``,
  ``nn.Linear(H, V)`` logits;
* loss per sentence: cross-entropy summed over the non-padding positions (``ignore_index``
  = 0) plus KL(N(μ, σ²) ‖ N(0, I)) summed over latents, averaged over the batch;
  z = μ + σ·ε;
* ``torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8)``, eager mode.

:func:`load_flax_params` copies vaejax's parameters in, so both compute the same function:
Linen kernels (in, out) are the transposes of ``nn.Linear``/``nn.LSTM`` weights (out, in);
the gate order (i, f, g, o) is PyTorch's; vaejax's one LSTM bias goes to ``bias_ih`` and
``bias_hh`` is zero (PyTorch adds the two, so the function and each vector's gradient are
the same; Adam then moves the sum of the two twice as fast, a difference in the
trajectory, not in the cost).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BOS_ID, PAD_ID = 2, 0  # vaejax.types


class LSTMVAE(nn.Module):
  """``forward(tokens, eps) -> (logits (B, T, V), μ, log σ²)``; the module docstring's model."""

  def __init__(self, vocab_size: int, embedding_size: int = 256, hidden_size: int = 256,
               latent_dim: int = 32):
    super().__init__()
    self.encoder_embedding = nn.Embedding(vocab_size, embedding_size)
    self.encoder = nn.LSTM(embedding_size, hidden_size, batch_first=True)
    self.posterior = nn.Linear(hidden_size, 2 * latent_dim)
    self.decoder_embedding = nn.Embedding(vocab_size, embedding_size)
    self.initial_state = nn.Linear(latent_dim, hidden_size)
    self.decoder = nn.LSTM(embedding_size + latent_dim, hidden_size, batch_first=True)
    self.output = nn.Linear(hidden_size, vocab_size)

  def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hs, _ = self.encoder(self.encoder_embedding(tokens))
    last = ((tokens != PAD_ID).sum(1) - 1).clamp(min=0)
    h = hs[torch.arange(tokens.shape[0]), last]
    return self.posterior(h).chunk(2, dim=-1)

  def decode(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    bos = torch.full_like(tokens[:, :1], BOS_ID)
    inputs = self.decoder_embedding(torch.cat([bos, tokens[:, :-1]], dim=1))
    inputs = torch.cat([inputs, z[:, None, :].expand(-1, tokens.shape[1], -1)], dim=-1)
    c0 = self.initial_state(z)[None]
    hs, _ = self.decoder(inputs, (torch.tanh(c0), c0))
    return self.output(hs)

  def forward(self, tokens: torch.Tensor, eps: torch.Tensor | None = None):
    mean, log_var = self.encode(tokens)
    if eps is None:
      eps = torch.randn_like(mean)
    z = mean + torch.exp(0.5 * log_var) * eps
    return self.decode(z, tokens), mean, log_var


def elbo_loss(tokens: torch.Tensor, logits: torch.Tensor, mean: torch.Tensor,
              log_var: torch.Tensor) -> torch.Tensor:
  """Batch mean of −ELBO: CE summed over non-padding positions + KL summed over latents."""
  batch, length, vocab = logits.shape
  recon = F.cross_entropy(logits.reshape(-1, vocab), tokens.reshape(-1), ignore_index=PAD_ID,
                          reduction="none").view(batch, length).sum(1)
  kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(1)
  return (recon + kl).mean()


def make_train_step(model: LSTMVAE, learning_rate: float) -> Callable[[torch.Tensor], torch.Tensor]:
  """``step(tokens) -> loss``: forward, loss, backward and one Adam update, in eager mode."""
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.999),
                               eps=1e-8)

  def step(tokens: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = elbo_loss(tokens, *model(tokens))
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def _copy(target: torch.Tensor, value: Any) -> None:
  value = torch.from_numpy(np.array(value, np.float32))  # a writable copy
  if tuple(target.shape) != tuple(value.shape):
    raise ValueError(f"Shape mismatch: torch {tuple(target.shape)} vs flax {tuple(value.shape)}.")
  with torch.no_grad():
    target.copy_(value)


def _copy_lstm(lstm: nn.LSTM, params: Mapping[str, Any]) -> None:
  _copy(lstm.weight_ih_l0, np.asarray(params["input_kernel"]).T)
  _copy(lstm.weight_hh_l0, np.asarray(params["recurrent_kernel"]).T)
  _copy(lstm.bias_ih_l0, params["bias"])
  _copy(lstm.bias_hh_l0, np.zeros_like(np.asarray(params["bias"])))


def load_flax_params(model: LSTMVAE, params: Mapping[str, Any]) -> None:
  """Copies the parameters of a vaejax ``lstm_vae`` (``variables["params"]``) into ``model``."""
  _copy(model.encoder_embedding.weight, params["encoder_embedding"])
  _copy(model.decoder_embedding.weight, params["decoder_embedding"])
  _copy_lstm(model.encoder, params["encoder"])
  _copy_lstm(model.decoder, params["decoder"])
  for layer, name in ((model.posterior, "posterior"), (model.initial_state, "initial_state")):
    _copy(layer.weight, np.asarray(params[name]["kernel"]).T)
    _copy(layer.bias, params[name]["bias"])
  _copy(model.output.weight, np.asarray(params["output_kernel"]).T)
  _copy(model.output.bias, params["output_bias"])


def num_params(model: nn.Module) -> int:
  """Trainable parameters, less the ``bias_hh`` vectors vaejax's single-bias LSTM has not."""
  total = sum(p.numel() for p in model.parameters())
  return total - sum(p.numel() for n, p in model.named_parameters() if "bias_hh" in n)
