"""A hand-written training loop for the tutorial model (``--preset seed``), same maths as autograd.

The tutorial trains a small sigmoid network (``ModelConfig.tutorial()``: 20-10-20) one user per
step with ``torch.optim.RMSprop`` (L2 added to the gradient) and never clears the gradients, so
every step applies the running sum of all gradients so far. The preset runs 200 epochs of such
one-user steps; through autograd and the optimizer object each step pays for a dense forward and
backward pass over the whole catalogue and a dozen small tensor calls. This module runs the same
steps by hand, on the parameters of the same ``Autoencoder``:

* the forward pass and the masked MSE only read the movies the user rated: the first layer is a
  weighted sum of those movies' rows, the rating head is evaluated at those movies only;
* the backward pass is written out (sigmoid' = (1 - h) h); the gradients of the first layer and
  of the rating head are non-zero on the rated movies' rows only, so only those rows are added to
  the accumulated gradient (autograd adds exact zeros to the others);
* RMSprop is the optimizer's arithmetic, operation by operation, on one flat buffer holding every
  parameter: the weight decay and the accumulated gradient touch every parameter every step, and
  this costs a handful of vectorised passes instead of one optimizer call per tensor.

Data order, initialisation, seeds, validation, early stopping, progress bar and the per-epoch
records and JSON lines are those of :func:`ml.fit.pipeline.fit`, which hands such
configurations here (see :func:`supports`). The results equal the autograd loop's up to
rounding (sums are taken in another order); ``tests/ml/test_tutorial.py`` runs both loops side
by side in float64.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import expit
from torch import nn
from tqdm import tqdm

from ml.fit.config import TrainConfig
from ml.fit.loop import (
    Dist,
    EpochCallback,
    _epoch_batches,
    _n_batches,
    _seed_everything,
    lr_factor,
    run_epochs,
)
from ml.model import Autoencoder, ModelConfig

ENABLED = True  # False sends every configuration to ml.fit.loop's autograd loop (for comparisons)
ALPHA = 0.99  # torch.optim.RMSprop's defaults, which ml.fit.loop.make_optimizer keeps
EPS = 1e-8


def supports_model(config: ModelConfig) -> bool:
    """Whether the model is a plain sigmoid stack on raw ratings with a masked-MSE rating head
    and nothing else (the tutorial's model, any hidden sizes)."""
    return (
        config.activation == "sigmoid"
        and config.rating_input
        and not config.binary_input
        and not config.baseline
        and not config.normalise
        and not config.wide
        and not config.wide_rating
        and config.ranking_loss == "none"
        and config.dropout == 0.0
        and config.input_dropout == 0.0
    )


def supports(
    config: TrainConfig, d: Dist, device: torch.device, train: sp.csr_matrix | None = None
) -> bool:
    """Whether :func:`fit` reproduces ``ml.fit.pipeline.fit`` for this configuration (and
    ``train``): the tutorial's model, RMSprop, one user per step, no gradient clipping, one
    process on the CPU, and no movie stored twice in a user's row."""
    return (
        ENABLED
        and config.optimizer == "rmsprop"
        and config.batch_size == 1
        and config.grad_clip == 0
        and not d.active
        and device.type == "cpu"
        and supports_model(config.model)
        and (train is None or not _has_duplicates(train))
    )


def _has_duplicates(m: sp.csr_matrix) -> bool:
    """Whether some row of ``m`` stores a column twice."""
    m = sp.csr_matrix(m)
    if m.has_canonical_format:
        return False
    summed = m.copy()
    summed.sum_duplicates()
    return bool(summed.nnz != m.nnz)


class TutorialTrainer:
    """Trains ``model`` in place, one user per step, as ``ml.fit.loop._train_epoch`` with
    ``torch.optim.RMSprop(model.parameters(), lr, weight_decay=config.weight_decay)`` does.

    While the trainer lives, the model's parameters are views into one flat buffer (in the
    model's dtype) whose first part is a (movies × (2 h0 + 1)) block: per movie its row of the
    first layer, its row of the rating head and its rating-head bias side by side, so one gather
    and one scatter serve a user's movies. :meth:`release` gives every parameter its own
    contiguous memory back. The model may be used (validation, state dicts) between steps.
    """

    def __init__(self, model: Autoencoder, config: TrainConfig) -> None:
        if not supports_model(model.config) or model.w_rating is None:
            raise ValueError("the hand-written loop only trains the tutorial's kind of model")
        self.model = model
        self.config = config
        self.weight = float(model.config.rating_weight)
        params = [p for p in model.parameters() if p.requires_grad]
        dtype = params[0].dtype
        if any(p.dtype != dtype or p.device.type != "cpu" for p in params):
            raise ValueError("parameters must share one dtype, on the CPU")
        n_items, width = model.w_rating.shape
        self.width = width
        size = sum(p.numel() for p in params)
        self.flat = torch.empty(size, dtype=dtype)  # every parameter
        self.grad = torch.zeros(size, dtype=dtype)  # the accumulated gradient (each p.grad)
        self.square_avg = torch.zeros(size, dtype=dtype)  # RMSprop's state
        self.work = torch.empty(size, dtype=dtype)  # the step's gradient + weight decay
        self.avg = torch.empty(size, dtype=dtype)  # sqrt(square_avg) + eps
        head = model.rating_head
        per_movie = [(model.w_rating, 0), (head.weight, width), (head.bias, 2 * width)]
        block_size = n_items * (2 * width + 1)
        grads: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            block = self.flat[:block_size].view(n_items, 2 * width + 1)
            g_block = self.grad[:block_size].view(n_items, 2 * width + 1)
            for p, col in per_movie:
                cols = slice(col, col + (p.shape[1] if p.dim() == 2 else 1))
                view, g_view = block[:, cols].view(p.shape), g_block[:, cols].view(p.shape)
                view.copy_(p)
                p.data, grads[id(p)] = view, g_view
            offset = block_size
            placed = {id(p) for p, _ in per_movie}
            for p in params:
                if id(p) in placed:
                    continue
                view = self.flat[offset : offset + p.numel()].view(p.shape)
                view.copy_(p)
                p.data = view
                grads[id(p)] = self.grad[offset : offset + p.numel()].view(p.shape)
                offset += p.numel()
        self.params = params
        self.block, self.g_block = block.numpy(), g_block.numpy()
        self.b0, self.g_b0 = model.input_bias.detach().numpy(), grads[id(model.input_bias)].numpy()
        self.layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for layer in [*model.encoder, *model.decoder]:
            assert isinstance(layer, nn.Linear)
            w, b = layer.weight, layer.bias
            pairs = (w.detach(), grads[id(w)], b.detach(), grads[id(b)])
            self.layers.append(tuple(t.numpy() for t in pairs))  # type: ignore[arg-type]
        np_dtype = self.block.dtype
        self.np_dtype = np_dtype
        widths = [width] + [b.size for _, _, b, _ in self.layers]
        self.h = [np.empty(w, np_dtype) for w in widths]  # activations, input side first
        self.dz = [np.empty(w, np_dtype) for w in widths]  # gradients of the pre-activations
        self.slope = [np.empty(w, np_dtype) for w in widths]  # σ'(z) = (1 - h) h
        self.dz_col = [dz[:, None] for dz in self.dz]
        self.outer = [
            np.empty((b.size, h.size), np_dtype)
            for (_, _, b, _), h in zip(self.layers, self.h, strict=False)
        ]
        self.update = np.empty((n_items, 2 * width + 1), np_dtype)  # a step's rows of g_block
        self.lr = config.lr

    # ------------------------------------------------------------------ one step
    def step(self, cols: np.ndarray, ratings: np.ndarray, lr: float) -> float:
        """One optimisation step on a user who rated the movies ``cols`` (column indices, each
        once) with ``ratings``; returns the step's rating MSE (before the update)."""
        n, w = cols.size, self.width
        h, dz, slope = self.h, self.dz, self.slope
        rows = self.block[cols]  # (n, 2 h0 + 1): first-layer rows, head rows, head biases
        # Forward: h0 = σ(b0 + Σ_j r_j W0[j]), the hidden layers, ratings of the rated movies.
        np.dot(ratings, rows[:, :w], out=h[0])
        h[0] += self.b0
        expit(h[0], out=h[0])
        for (weight, _, bias, _), h_in, h_out in zip(self.layers, h, h[1:], strict=False):
            np.dot(weight, h_in, out=h_out)
            h_out += bias
            expit(h_out, out=h_out)
        top = h[-1]
        head_rows = rows[:, w : 2 * w]
        err = head_rows @ top
        err += rows[:, 2 * w]
        err -= ratings  # prediction - rating
        mse = float(np.dot(err, err)) / n
        # Backward of rating_weight · Σ (pred - r)² / n.
        err *= 2.0 * self.weight / n  # d loss / d prediction at the rated movies
        update = self.update[:n]
        np.multiply(err[:, None], top, out=update[:, w : 2 * w])
        update[:, 2 * w] = err
        np.dot(err, head_rows, out=dz[-1])
        for i in range(len(self.layers), -1, -1):
            np.subtract(1.0, h[i], out=slope[i])  # dz = dh (1 - h) h, as torch's sigmoid does
            dz[i] *= slope[i]
            dz[i] *= h[i]
            if i == 0:
                break
            weight, g_weight, _, g_bias = self.layers[i - 1]
            np.multiply(self.dz_col[i], h[i - 1], out=self.outer[i - 1])
            g_weight += self.outer[i - 1]
            g_bias += dz[i]
            np.dot(dz[i], weight, out=dz[i - 1])
        np.multiply(ratings[:, None], dz[0], out=update[:, :w])
        self.g_block[cols] += update  # autograd adds zeros to the other movies' rows
        self.g_b0 += dz[0]
        self._rmsprop(lr)
        return mse

    def _rmsprop(self, lr: float) -> None:
        """``torch.optim.RMSprop.step`` (alpha 0.99, eps 1e-8, L2 ``weight_decay`` added to the
        gradient, no momentum, not centred) on every parameter at once, operation by operation:
        numpy where it rounds as torch does (products and sums of two numbers, square roots),
        torch's own kernels for the fused ``addcmul_`` and ``addcdiv_``."""
        grad, wd = self.grad, self.config.weight_decay
        if wd != 0:  # grad.add(param, alpha=wd)
            work = self.work.numpy()
            np.multiply(self.flat.numpy(), self.np_dtype.type(wd), out=work)
            work += grad.numpy()
            grad = self.work
        self.square_avg.mul_(ALPHA).addcmul_(grad, grad, value=1 - ALPHA)
        avg = self.avg.numpy()
        np.sqrt(self.square_avg.numpy(), out=avg)
        avg += self.np_dtype.type(EPS)
        self.flat.addcdiv_(grad, self.avg, value=-lr)
        self.lr = lr

    # ------------------------------------------------------------------ one epoch
    def epoch(
        self, train: sp.csr_matrix, epoch: int, step: int, total_steps: int
    ) -> tuple[dict[str, float], int]:
        """One pass over the users in ``ml.fit.loop``'s order for ``epoch``; returns the mean loss
        parts (``train_loss``, ``train_rating_mse``) and the updated step count, as
        ``ml.fit.loop._train_epoch``."""
        config = self.config
        d = Dist()
        n_batches = _n_batches(train, config, d)
        indptr, indices = train.indptr, train.indices
        values = np.asarray(train.data, dtype=self.np_dtype)
        bar = tqdm(
            _epoch_batches(train, epoch, config, d),
            total=n_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not config.progress,
            file=sys.stderr,
        )
        constant = config.schedule == "constant"
        weight = self.model.config.rating_weight
        total = 0.0
        for rows in bar:
            user = rows[0]
            start, end = indptr[user], indptr[user + 1]
            lr = config.lr if constant else config.lr * lr_factor(step, total_steps, config)
            if config.zero_grad:
                self.grad.zero_()
            mse = self.step(indices[start:end], values[start:end], lr)
            step += 1
            total += mse
            if not bar.disable:
                bar.set_postfix(loss=f"{weight * mse:.4f}", refresh=False)
        count = float(n_batches) or 1.0
        return {"train_loss": weight * total / count, "train_rating_mse": total / count}, step

    def release(self) -> None:
        """Give every parameter its own memory again (a checkpoint must not share storage)."""
        with torch.no_grad():
            for p in self.params:
                p.data = p.data.clone(memory_format=torch.contiguous_format)


def fit(
    train: sp.csr_matrix,
    val: sp.csr_matrix | None,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
) -> tuple[Autoencoder, list[dict[str, Any]]]:
    """``ml.fit.pipeline.fit`` for a configuration :func:`supports` accepts (float32 CSR ``train``,
    threads already set): the same model, history, JSON lines and callbacks."""
    train = sp.csr_matrix(train, dtype=np.float32)
    device = torch.device("cpu")
    d = Dist()
    _seed_everything(config.seed)
    model = Autoencoder.from_data(train, config.model).to(device)
    trainer = TutorialTrainer(model, config)
    total_steps = config.epochs * _n_batches(train, config, d)

    def run_epoch(epoch: int, step: int) -> tuple[dict[str, float], int, float]:
        parts, step = trainer.epoch(train, epoch, step, total_steps)
        return parts, step, trainer.lr

    history = run_epochs(model, train, val, config, d, device, run_epoch, on_epoch)
    trainer.release()
    return model.eval().to("cpu"), history
