r"""PyTorch eager reference of the benchmarked vaejax models and their train step.

The baseline of :mod:`experiments.benchmarks.train_step` (the optional ``bench`` extra,
``torch>=2.2``). Same architectures, same loss, same optimizer as the vaejax step:

* ``conv_vae``: the disentanglement_lib dSprites VAE of
  :class:`vaejax.models.networks.ConvEncoder` / ``ConvDecoder`` (4 stride-2 convs, FC 256,
  Gaussian heads; FC 256, FC 1024, 4 stride-2 4×4 transposed convs to Bernoulli logits);
* ``mlp_vae``: :class:`vaejax.models.networks.MLPEncoder` / ``MLPDecoder``.

Loss per example: sigmoid cross-entropy summed over pixels plus the analytic
KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) summed over latents, averaged
over the batch; z = μ + σ·ε. Optimizer: ``torch.optim.Adam(lr=1e-4, betas=(0.9, 0.999),
eps=1e-8)`` with PyTorch's default implementation; eager mode (no ``torch.compile``).

**Layouts.** PyTorch is NCHW, vaejax NHWC; :func:`load_flax_params` copies flax parameters
in so both compute the same function:

* conv kernels ``(kh, kw, Cin, Cout)`` → ``(Cout, Cin, kh, kw)``;
* "SAME" stride-2 convs: for even input sizes XLA pads ``(k − 2)/2`` on both sides, i.e.
  ``padding=1`` for k = 4 and ``padding=0`` for k = 2 (symmetric, so ``Conv2d`` needs no
  extra pad);
* transposed convs: flax's "SAME" ``ConvTranspose`` (k = 4, s = 2) computes
  y_o = Σ_i x_i w_{2i − o + 2}; ``ConvTranspose2d(k=4, stride=2, padding=1)`` computes
  y_o = Σ_i x_i W_{o − 2i + 1}. They agree when W_t = w_{3 − t}: the kernel is flipped
  spatially, and its layout is ``(Cin, Cout, kh, kw)``;
* flattening: flax flattens (h, w, c), PyTorch (c, h, w), so the rows of the first dense
  layer after the encoder's convs, and the columns of the decoder's dense layer before the
  reshape, are permuted.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("conv_vae", "mlp_vae")

# disentanglement_lib's dSprites architecture (the vaejax defaults).
ENCODER_CONVS = ((32, 4), (32, 4), (64, 2), (64, 2))  # (channels, kernel), stride 2
DECODER_CHANNELS = (64, 32, 32)
BASE_CHANNELS = 64
DENSE_SIZE = 256


class ConvEncoder(nn.Module):
  """NCHW images → (μ, log σ²); the architecture of ``vaejax.models.networks.ConvEncoder``."""

  def __init__(self, image_shape: Sequence[int], latent_dim: int = 10):
    super().__init__()
    height, width, channels = image_shape
    convs, cin = [], channels
    for cout, kernel in ENCODER_CONVS:
      convs.append(nn.Conv2d(cin, cout, kernel, stride=2, padding=(kernel - 2) // 2))
      cin = cout
    self.convs = nn.ModuleList(convs)
    factor = 2 ** len(ENCODER_CONVS)
    self.grid = (cin, height // factor, width // factor)
    self.dense = nn.Linear(int(np.prod(self.grid)), DENSE_SIZE)
    self.mean = nn.Linear(DENSE_SIZE, latent_dim)
    self.log_var = nn.Linear(DENSE_SIZE, latent_dim)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for conv in self.convs:
      x = F.relu(conv(x))
    h = F.relu(self.dense(x.flatten(1)))
    return self.mean(h), self.log_var(h)


class ConvDecoder(nn.Module):
  """z → NCHW Bernoulli logits; the architecture of ``vaejax.models.networks.ConvDecoder``."""

  def __init__(self, image_shape: Sequence[int], latent_dim: int = 10):
    super().__init__()
    height, width, channels = image_shape
    factor = 2 ** (len(DECODER_CHANNELS) + 1)
    self.grid = (BASE_CHANNELS, height // factor, width // factor)
    self.dense_0 = nn.Linear(latent_dim, DENSE_SIZE)
    self.dense_1 = nn.Linear(DENSE_SIZE, int(np.prod(self.grid)))
    deconvs, cin = [], BASE_CHANNELS
    for cout in DECODER_CHANNELS + (channels,):
      deconvs.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
      cin = cout
    self.deconvs = nn.ModuleList(deconvs)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = F.relu(self.dense_1(F.relu(self.dense_0(z))))
    h = h.view(z.shape[0], *self.grid)
    for deconv in self.deconvs[:-1]:
      h = F.relu(deconv(h))
    return self.deconvs[-1](h)


class MLPEncoder(nn.Module):
  """Flattened NCHW images → (μ, log σ²); as ``vaejax.models.networks.MLPEncoder``."""

  def __init__(self, image_shape: Sequence[int], latent_dim: int = 10,
               hidden_sizes: Sequence[int] = (512, 256)):
    super().__init__()
    sizes = (int(np.prod(image_shape)),) + tuple(hidden_sizes)
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    self.mean = nn.Linear(sizes[-1], latent_dim)
    self.log_var = nn.Linear(sizes[-1], latent_dim)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.flatten(1)
    for layer in self.hidden:
      h = F.relu(layer(h))
    return self.mean(h), self.log_var(h)


class MLPDecoder(nn.Module):
  """z → NCHW logits; as ``vaejax.models.networks.MLPDecoder`` (mirrored hidden sizes)."""

  def __init__(self, image_shape: Sequence[int], latent_dim: int = 10,
               hidden_sizes: Sequence[int] = (256, 512)):
    super().__init__()
    height, width, channels = image_shape
    self.out_shape = (channels, height, width)
    sizes = (latent_dim,) + tuple(hidden_sizes)
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    self.output = nn.Linear(sizes[-1], int(np.prod(image_shape)))

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = z
    for layer in self.hidden:
      h = F.relu(layer(h))
    return self.output(h).view(z.shape[0], *self.out_shape)


class VAE(nn.Module):
  """Encoder → z = μ + σ·ε → decoder; ``forward`` returns (logits, μ, log σ²)."""

  def __init__(self, encoder: nn.Module, decoder: nn.Module, image_shape: Sequence[int]):
    super().__init__()
    self.encoder, self.decoder = encoder, decoder
    self.image_shape = tuple(image_shape)

  def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
    mean, log_var = self.encoder(x)
    if eps is None:
      eps = torch.randn_like(mean)
    z = mean + torch.exp(0.5 * log_var) * eps
    return self.decoder(z), mean, log_var


def create_model(name: str, image_shape: Sequence[int], latent_dim: int = 10,
                 hidden_sizes: Sequence[int] = (512, 256)) -> VAE:
  """The PyTorch twin of ``vaejax.models.create_model({"name": name, ...}, image_shape)``."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; the PyTorch baseline has {MODELS}.")
  image_shape = tuple(int(v) for v in image_shape)
  if name == "conv_vae":
    if image_shape[0] % 16 or image_shape[1] % 16:
      raise ValueError(f"conv_vae needs height and width multiples of 16, got {image_shape}.")
    return VAE(ConvEncoder(image_shape, latent_dim), ConvDecoder(image_shape, latent_dim),
               image_shape)
  return VAE(MLPEncoder(image_shape, latent_dim, hidden_sizes),
             MLPDecoder(image_shape, latent_dim, tuple(reversed(hidden_sizes))), image_shape)


def elbo_loss(x: torch.Tensor, logits: torch.Tensor, mean: torch.Tensor,
              log_var: torch.Tensor) -> torch.Tensor:
  """Batch mean of −ELBO: Σ_pixels sigmoid CE(logits, x) + Σ_latents KL(q ‖ N(0, I))."""
  recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
  kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(1)
  return (recon + kl).mean()


def make_optimizer(parameters: Any, learning_rate: float = 1e-4) -> torch.optim.Optimizer:
  """disentanglement_lib's Adam (β = (0.9, 0.999), ε = 1e-8), PyTorch's default kernel."""
  return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)


def make_train_step(model: VAE, learning_rate: float = 1e-4, *,
                    autocast: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
  """``step(x_nchw) -> loss``: forward, loss, backward and one Adam update, in eager mode.

  ``autocast=torch.bfloat16`` runs the forward pass under ``torch.autocast`` on the
  parameters' device type: PyTorch's mixed precision (convolutions and matrix products in
  bfloat16; parameters, gradients, Adam and the loss in float32).
  """
  optimizer = make_optimizer(model.parameters(), learning_rate)
  device_type = next(model.parameters()).device.type

  def step(x: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with (torch.autocast(device_type, dtype=autocast) if autocast is not None
          else contextlib.nullcontext()):
      outputs = model(x)
    loss = elbo_loss(x, *(t.float() for t in outputs))  # the loss in float32, as vaejax's
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def to_nchw(images: Any) -> torch.Tensor:
  """NHWC float images (numpy or jax) → a contiguous NCHW float32 tensor."""
  array = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
  return torch.from_numpy(array)


# ----------------------------------------------------------------------------- flax → torch


def _dense(layer: nn.Linear, params: Mapping[str, Any], *, rows_hwc=None, cols_hwc=None) -> None:
  """Copies a flax Dense (kernel (in, out)) into ``layer``; permutes (h, w, c)-ordered
  input rows or output columns to PyTorch's (c, h, w) order when their grid is given."""
  kernel, bias = np.asarray(params["kernel"], np.float32), np.asarray(params["bias"], np.float32)
  if rows_hwc is not None:
    h, w, c = rows_hwc
    kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
  if cols_hwc is not None:
    h, w, c = cols_hwc
    kernel = kernel.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(kernel.shape[0], -1)
    bias = bias.reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
  _set(layer.weight, kernel.T)
  _set(layer.bias, bias)


def _set(tensor: torch.Tensor, value: np.ndarray) -> None:
  if tuple(tensor.shape) != value.shape:
    raise ValueError(
        f"Parameter shape mismatch: torch {tuple(tensor.shape)} vs flax {value.shape}.")
  with torch.no_grad():
    tensor.copy_(torch.from_numpy(np.array(value, np.float32)))  # a writable copy


def _conv(layer: nn.Conv2d, params: Mapping[str, Any]) -> None:
  _set(layer.weight, np.asarray(params["kernel"], np.float32).transpose(3, 2, 0, 1))
  _set(layer.bias, np.asarray(params["bias"], np.float32))


def _conv_transpose(layer: nn.ConvTranspose2d, params: Mapping[str, Any]) -> None:
  kernel = np.asarray(params["kernel"], np.float32)[::-1, ::-1]  # W_t = w_{k−1−t}
  _set(layer.weight, kernel.transpose(2, 3, 0, 1))
  _set(layer.bias, np.asarray(params["bias"], np.float32))


def load_flax_params(model: VAE, params: Mapping[str, Any]) -> VAE:
  """Copies the parameters of the matching vaejax model into ``model`` (in place).

  ``params`` is the ``"params"`` collection of ``vaejax.models.create_model`` with the
  same name and image shape; see the module docstring for the layout changes.
  """
  enc, dec = params["encoder"], params["decoder"]
  if isinstance(model.encoder, ConvEncoder):
    for i, conv in enumerate(model.encoder.convs):
      _conv(conv, enc[f"conv_{i}"])
    c, h, w = model.encoder.grid
    _dense(model.encoder.dense, enc["dense"], rows_hwc=(h, w, c))
    c, h, w = model.decoder.grid
    _dense(model.decoder.dense_0, dec["dense_0"])
    _dense(model.decoder.dense_1, dec["dense_1"], cols_hwc=(h, w, c))
    for i, deconv in enumerate(model.decoder.deconvs[:-1]):
      _conv_transpose(deconv, dec[f"deconv_{i}"])
    _conv_transpose(model.decoder.deconvs[-1], dec["output"])
  else:
    height, width, channels = model.image_shape
    for i, layer in enumerate(model.encoder.hidden):
      _dense(layer, enc[f"hidden_{i}"], rows_hwc=(height, width, channels) if i == 0 else None)
    for i, layer in enumerate(model.decoder.hidden):
      _dense(layer, dec[f"hidden_{i}"])
    _dense(model.decoder.output, dec["output"], cols_hwc=(height, width, channels))
  _dense(model.encoder.mean, enc["heads"]["mean"])
  _dense(model.encoder.log_var, enc["heads"]["log_var"])
  return model


def num_params(model: nn.Module) -> int:
  """Number of scalar parameters."""
  return sum(p.numel() for p in model.parameters())
