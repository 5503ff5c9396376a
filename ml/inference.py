"""Serving a checkpoint: recommendations, predicted ratings, similar and popular movies.

A :class:`Recommender` is loaded once from a verified checkpoint and never changes afterwards, so
one object can serve many threads. Users are given by their ratings (``{movie_id: rating}`` or
``[(movie_id, rating), ...]``), not by id: a new rating changes the next answer at once and a
visitor is folded in without retraining.

Hot path: the user's row goes to the model as a packed sparse batch (only the rated movies'
columns of the first layer are read, ``Autoencoder.forward_sparse``), under
``torch.inference_mode()``, with weights kept contiguous on the serving device; no dense (I,)
input row is built per request. Movie ids are mapped to columns with a binary search over the
sorted vocabulary stored in the manifest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ml.checkpoint import RATING_SCALE, CheckpointError, load_model
from ml.model import Autoencoder, user_offset
from ml.scored import Scored

UserRatings = Mapping[int, float] | Sequence[tuple[int, float]]
BATCH = 256  # users per forward pass in recommend_many
PRECISIONS = ("float32", "bfloat16", "float16", "auto")
BF16_MIN_ITEMS = 20_000  # below this the output layers are cheap: float32 everywhere


class HalfLinear(torch.nn.Module):
    """A linear layer whose weights are held in float16, packed for fbgemm's matrix product:
    inputs and outputs stay float32, the product accumulates in float32, and only the weights
    are rounded (11 significant bits, against bfloat16's 8). On x86 CPUs it computes a wide
    output layer at small batches faster than float32 and than bfloat16 (``_choose_precision``
    measures it at load). Built from an ``nn.Linear``; :func:`half_linear_available` says
    whether this PyTorch build has the kernels."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        weight = layer.weight.detach().float().contiguous()
        bias = None if layer.bias is None else layer.bias.detach().float().contiguous()
        self._packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float().contiguous(), self._packed)


def half_linear_available() -> bool:
    """Whether :class:`HalfLinear` works here (fbgemm's float16 kernels: x86 CPU builds)."""
    try:
        layer = HalfLinear(torch.nn.Linear(4, 3))
        return bool(layer(torch.ones(2, 4)).shape == (2, 3))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@dataclass(frozen=True, slots=True)
class Prediction:
    """A predicted rating and what produced it: ``model``, ``bias`` or ``global_mean``."""

    value: float
    source: str


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _host(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array (no copy for a CPU tensor)."""
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


class Recommender:
    """A loaded, immutable model with the movie vocabulary of its checkpoint."""

    def __init__(
        self,
        model: Autoencoder,
        manifest: dict[str, Any],
        path: Path,
        device: torch.device,
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.manifest = manifest
        self.path = path
        self.version_name = path.name
        self.device = device
        self.movie_ids = _readonly(np.asarray(manifest["movie_ids"], dtype=np.int64))
        if len(self.movie_ids) != model.n_items:
            raise CheckpointError(
                f"{path}: manifest lists {len(self.movie_ids)} movies, the model has "
                f"{model.n_items} columns"
            )
        order = np.argsort(self.movie_ids, kind="stable")
        self._sorted_ids = _readonly(self.movie_ids[order])
        self._sorted_cols = _readonly(order.astype(np.int64))
        scale = manifest.get("rating_scale", RATING_SCALE)
        self.rating_min, self.rating_max = float(scale["min"]), float(scale["max"])
        self._popularity = _readonly(
            np.asarray(manifest.get("popularity", np.zeros(len(self.movie_ids))), dtype=np.int64)
        )
        self._popular_order = _readonly(np.argsort(-self._popularity, kind="stable"))
        self._unit_items: torch.Tensor | None = None  # (I, d): a model without item–item part
        if model.wide is None and model.similar_cols is None:
            emb = model.item_embeddings().detach().float()  # (I, d)
            self._unit_items = torch.nn.functional.normalize(emb, dim=1).contiguous().to(device)
        self.global_mean, self._item_bias = self._bias_terms(model, manifest)
        # Last: the statistics above are read from the float32 weights.
        self.precision = self._choose_precision(precision)
        if self.precision == "bfloat16":
            self.model.to(torch.bfloat16)
        elif self.precision == "float16":
            # (a module of the same interface: forward (B, h) → (B, I) float32)
            ranking = self._ranking_layer()
            assert ranking is not None  # checked by _choose_precision
            self.model.ranking_head = HalfLinear(ranking)  # type: ignore[assignment]
        if getattr(self.model, "item_code", None) is not None:
            # The item-code fold-in gathers from H Hᵀ (I × I): computed now, not on a request.
            self.model._item_code_gram()

    def _ranking_layer(self) -> torch.nn.Linear | None:
        """The ranking head when the model has one (an ``nn.Linear``), else None."""
        head = getattr(self.model, "ranking_head", None)
        return head if isinstance(head, torch.nn.Linear) else None

    def _choose_precision(self, precision: str) -> str:
        """The weights' precision; ``auto`` picks, for a large catalogue on a CPU, what the
        full-width ranking layer computes fastest here at a batch of 8 (measured, not assumed:
        on CPUs without native bfloat16 it is slower than float32), float32 otherwise:

        - ``float16``: the ranking head alone in packed float16 (:class:`HalfLinear`), every
          other weight float32; preferred when about as fast as bfloat16, being 16 times as
          exact (11 significant bits against 8);
        - ``bfloat16``: every weight cast; rankings move only among near-ties (top-10 overlap
          0.98 and predicted ratings within 0.05 on the 87,000-movie benchmark catalogue);
        - ``float32``: unless one of them takes under 0.7 of its time."""
        ranking = self._ranking_layer()
        if precision == "float16" and ranking is None:
            raise ValueError("float16 precision needs a model with a ranking head")
        if precision == "float16" and (self.device.type != "cpu" or not half_linear_available()):
            raise ValueError("float16 precision needs fbgemm's float16 kernels (an x86 CPU)")
        if precision != "auto":
            return precision
        if self.device.type != "cpu" or self.n_items < BF16_MIN_ITEMS:
            return "float32"
        head = ranking if ranking is not None else self.model.rating_head
        layers: dict[str, torch.nn.Module] = {
            "float32": head,
            "bfloat16": torch.nn.Linear(head.in_features, head.out_features).to(torch.bfloat16),
        }
        layers["bfloat16"].load_state_dict(head.state_dict())
        if ranking is not None and half_linear_available():
            layers["float16"] = HalfLinear(ranking)
        timings = {}
        with torch.inference_mode():
            for name, layer in layers.items():
                x = torch.randn(8, head.in_features)
                x = x.to(torch.bfloat16) if name == "bfloat16" else x
                layer(x)  # warm-up
                start = time.perf_counter()
                for _ in range(3):
                    layer(x)
                timings[name] = time.perf_counter() - start
        fast = {n: t for n, t in timings.items() if t < 0.7 * timings["float32"]}
        if not fast:
            return "float32"
        if "float16" in fast and fast["float16"] <= 1.1 * min(fast.values()):
            return "float16"
        return min(fast, key=lambda n: fast[n])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls, path: Path | str, device: str | torch.device = "cpu", precision: str = "float32"
    ) -> Recommender:
        """Load and verify the checkpoint at ``path`` (raises ``CheckpointError``).

        ``precision``: ``float32``, ``bfloat16`` (weights cast after loading; scores are
        returned as float32), ``float16`` (the ranking head's weights only, packed; CPU) or
        ``auto`` (see ``_choose_precision``; the API server's choice).
        """
        path = Path(path)
        model, manifest = load_model(path)
        return cls(model, manifest, path, resolve_device(device), precision)

    @staticmethod
    def _bias_terms(model: Autoencoder, manifest: dict[str, Any]) -> tuple[float, np.ndarray]:
        """Global mean and movie biases for the fallback predictions (model buffers if any)."""
        state = model.state_dict()
        norm = manifest.get("normalisation", {})
        mean = state.get("global_mean")
        global_mean = float(mean) if mean is not None else float(norm.get("global_mean", 0.0))
        bias = state.get("item_bias")
        if bias is None or float(bias.abs().sum()) == 0.0:
            bias_np = np.asarray(norm.get("item_bias", np.zeros(model.n_items)), dtype=np.float32)
        else:
            bias_np = bias.detach().cpu().numpy().astype(np.float32)
        return global_mean, _readonly(bias_np)

    @property
    def n_items(self) -> int:
        return len(self.movie_ids)

    # ------------------------------------------------------------------ vocabulary
    def columns(self, movie_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Column of every id, ``-1`` for ids the model does not know (order kept)."""
        ids = np.asarray(list(movie_ids) if not isinstance(movie_ids, np.ndarray) else movie_ids)
        ids = ids.astype(np.int64, copy=False).ravel()
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_c = np.minimum(pos, len(self._sorted_ids) - 1)
        known = (pos < len(self._sorted_ids)) & (self._sorted_ids[pos_c] == ids)
        return np.where(known, self._sorted_cols[pos_c], -1)

    def index_of(self, movie_ids: Iterable[int]) -> tuple[np.ndarray, list[int]]:
        """Columns of the known ids (in the order given) and the list of unknown ids."""
        ids = np.asarray(list(movie_ids), dtype=np.int64)
        cols = self.columns(ids)
        return cols[cols >= 0], [int(i) for i in ids[cols < 0]]

    def _encode(self, ratings: UserRatings) -> tuple[np.ndarray, np.ndarray]:
        """Columns and values of a user's known rated movies; unknown movies are ignored."""
        pairs = ratings.items() if isinstance(ratings, Mapping) else ratings
        items = list(pairs)
        if not items:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        try:
            arr = np.asarray(items, dtype=np.float64).reshape(len(items), 2)
        except (TypeError, ValueError) as exc:
            raise ValueError("ratings must be (movie_id, rating) pairs of numbers") from exc
        values = arr[:, 1]
        bad = ~np.isfinite(values) | (values < self.rating_min) | (values > self.rating_max)
        if bad.any():
            raise ValueError(
                f"rating {values[bad][0]} is outside the scale "
                f"[{self.rating_min}, {self.rating_max}]"
            )
        cols = self.columns(arr[:, 0].astype(np.int64))
        keep = cols >= 0
        cols, values = cols[keep], values[keep]
        # Each movie once per user (the last rating given wins).
        _, last = np.unique(cols[::-1], return_index=True)
        sel = len(cols) - 1 - last
        return cols[sel], values[sel].astype(np.float32)

    # ------------------------------------------------------------------ scoring
    def _packed(
        self, rows: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Columns (N,), values (N,) and offsets (B,) of B encoded users on the device, and
        the users' lengths (B,)."""
        if len(rows) == 1:
            cols, vals = rows[0]
            lengths, offsets = np.array([len(cols)]), np.zeros(1, dtype=np.int64)
        else:
            lengths = np.fromiter((len(c) for c, _ in rows), dtype=np.int64, count=len(rows))
            offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
            cols = np.concatenate([c for c, _ in rows]) if rows else np.empty(0, np.int64)
            vals = np.concatenate([v for _, v in rows]) if rows else np.empty(0, np.float32)
        dev = self.device
        return (
            torch.from_numpy(cols.astype(np.int64, copy=False)).to(dev),
            torch.from_numpy(vals.astype(np.float32, copy=False)).to(dev),
            torch.from_numpy(offsets).to(dev),
            lengths,
        )

    def _forward(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
        """(predicted ratings (B, I), scores (B, I)) for B encoded users in one pass."""
        idx_t, val_t, off_t, lengths = self._packed(rows)
        dev = self.device
        with torch.inference_mode():
            if hasattr(self.model, "forward_sparse"):
                pred, scores = self.model.forward_sparse(idx_t, val_t, off_t)
            else:  # dense fallback for models without a sparse first layer
                seg = torch.repeat_interleave(
                    torch.arange(len(rows), device=dev), torch.from_numpy(lengths).to(dev)
                )
                dense = torch.zeros(len(rows), self.n_items, device=dev)
                dense[seg, idx_t] = val_t
                pred, scores = self.model(dense, dense != 0)
        return pred.float(), scores.float()

    def score(self, ratings: UserRatings) -> tuple[np.ndarray, np.ndarray]:
        """(predicted ratings (I,), ranking scores (I,)) of one user over the whole catalogue."""
        pred, scores = self._forward([self._encode(ratings)])
        return pred[0].cpu().numpy(), scores[0].cpu().numpy()

    def top_k_rows(
        self,
        rows: Sequence[tuple[np.ndarray, np.ndarray]],
        ks: Sequence[int],
        allowed: Sequence[np.ndarray],
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The serving path: the best ``ks[b]`` allowed, unrated columns of each encoded row.

        ``rows`` are ``(columns, values)`` of known movies, ``allowed`` (I,) bool masks. One
        pass for the ranking scores over the whole catalogue, one masked ``torch.topk`` over
        the whole batch, then predicted ratings computed for the returned columns only (every
        rating path restricted to k columns per user, ``Autoencoder.rate_columns``; equal to
        the full computation) — with the model's re-ranking on, for its ``rerank_candidates``
        best-scored columns, which it orders again (``Autoencoder.top_k_sparse``).
        Returns per row ``(movie ids, scores, predicted ratings)``, best first; fewer than
        ``ks[b]`` when fewer movies are left.
        """
        if not rows:
            return []
        if any(np.shape(a) != (self.n_items,) for a in allowed):
            raise ValueError(f"allowed must be bool masks of shape ({self.n_items},)")
        first = allowed[0]
        blocked: torch.Tensor | None
        if len(rows) == 1 or all(a is first for a in allowed):  # one filter for the batch
            # No filter (the common case) blocks nothing but the users' own ratings, which the
            # model blocks itself; a shared filter is one (1, I) row, broadcast.
            blocked = None if first.all() else torch.from_numpy(~first[None, :]).to(self.device)
        else:
            blocked = torch.from_numpy(~np.stack(allowed)).to(self.device)
        top_cols, top_scores, top_preds = self._ranked(rows, max(ks), blocked)
        out = []
        for b, want in enumerate(ks):
            keep = min(want, int(np.isfinite(top_scores[b]).sum()))
            c = top_cols[b, :keep]
            out.append((self.movie_ids[c], top_scores[b, :keep], top_preds[b, :keep]))
        return out

    def _ranked(
        self,
        rows: Sequence[tuple[np.ndarray, np.ndarray]],
        k: int,
        blocked: torch.Tensor | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Columns, scores and predicted ratings (B, k) of the best ``k`` columns of encoded
        rows that neither ``blocked`` ((B, I) or (1, I) for all, None for nothing) nor their
        own ratings exclude: ``Autoencoder.top_k_sparse`` (the model's ranking, re-ranking
        included) — the one ranking every method of this class serves."""
        idx_t, val_t, off_t, lengths = self._packed(rows)
        k = min(k, self.n_items)
        if k <= 0:
            empty = np.empty((len(rows), 0))
            return empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.float32)
        with torch.inference_mode():
            if hasattr(self.model, "encode_sparse"):
                users = self.model.encode_sparse(idx_t, val_t, off_t)
                top_c, top_s, top_p = self.model.top_k_sparse(users, blocked, k)
            else:
                pred, scores = self._forward(rows)  # (B, I) each
                full = torch.zeros(len(rows), self.n_items, dtype=torch.bool, device=self.device)
                if blocked is not None:
                    full |= blocked
                users_of = np.repeat(np.arange(len(rows)), lengths)  # (N,) each entry's user
                full[torch.from_numpy(users_of).to(self.device), idx_t] = True
                top = torch.topk(scores.masked_fill(full, -math.inf), k, dim=1)
                top_c, top_s, top_p = top.indices, top.values, pred.gather(1, top.indices)
        return _host(top_c), _host(top_s.float()), _host(top_p.float())

    def _blocked(
        self, rated: np.ndarray, exclude: Iterable[int], allowed: np.ndarray | None
    ) -> torch.Tensor:
        """Bool (I,) of the columns that may not be recommended."""
        blocked = np.zeros(self.n_items, dtype=bool)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.n_items,):
                raise ValueError(f"allowed must be a bool mask of shape ({self.n_items},)")
            blocked |= ~allowed
        blocked[rated] = True
        ex_cols = self.columns(list(exclude))
        blocked[ex_cols[ex_cols >= 0]] = True
        return torch.from_numpy(blocked).to(self.device)

    def _top(
        self, encoded: tuple[np.ndarray, np.ndarray], blocked: torch.Tensor, n: int, offset: int
    ) -> list[Scored]:
        """Top ``n`` unblocked columns of one encoded user after skipping ``offset`` of them."""
        if n < 0 or offset < 0:
            raise ValueError("n and offset must be non-negative")
        k = min(n + offset, int((~blocked).sum()))
        if k <= offset:
            return []
        cols, scores, preds = self._ranked([encoded], k, blocked.clone().unsqueeze(0))
        c = cols[0, offset:k]
        return [
            Scored(int(m), float(s), float(p))
            for m, s, p in zip(
                self.movie_ids[c], scores[0, offset:k], preds[0, offset:k], strict=True
            )
        ]

    def recommend(
        self,
        ratings: UserRatings,
        n: int = 10,
        offset: int = 0,
        exclude: Iterable[int] = (),
        allowed: np.ndarray | None = None,
    ) -> list[Scored]:
        """The best ``n`` movies after ``offset`` that the user has not rated.

        Already-rated movies, ``exclude`` ids and columns where ``allowed`` is False are never
        returned. A user with no (known) ratings gets the model's answer for an empty row, which
        is defined for every model (the service may prefer :meth:`popular` there).
        """
        cols, vals = self._encode(ratings)
        return self._top((cols, vals), self._blocked(cols, exclude, allowed), n, offset)

    def recommend_many(
        self,
        users: Sequence[UserRatings],
        n: int = 10,
        exclude: Iterable[int] = (),
        allowed: np.ndarray | None = None,
    ) -> list[list[Scored]]:
        """:meth:`recommend` for many users, ``BATCH`` users per forward pass."""
        if n < 0:
            raise ValueError("n and offset must be non-negative")
        exclude = list(exclude)
        out: list[list[Scored]] = []
        for start in range(0, len(users), BATCH):
            encoded = [self._encode(r) for r in users[start : start + BATCH]]
            blocked = torch.stack([self._blocked(c, exclude, allowed) for c, _ in encoded])
            left = (~blocked).sum(1).tolist()
            cols, scores, preds = self._ranked(encoded, n, blocked)
            for b in range(len(encoded)):
                keep = min(n, int(left[b]))
                out.append(
                    [
                        Scored(int(m), float(s), float(p))
                        for m, s, p in zip(
                            self.movie_ids[cols[b, :keep]],
                            scores[b, :keep],
                            preds[b, :keep],
                            strict=True,
                        )
                    ]
                )
        return out

    def top_n_matrix(
        self, matrix: sp.csr_matrix, n: int, batch_size: int = BATCH
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Top-``n`` unrated movies of every row of a CSR over this model's columns, batched.

        Yields ``(first row of the batch, movie ids (B, n), scores (B, n))``; a row with fewer
        than ``n`` unrated movies has its tail padded with id ``-1`` and score ``-inf``.
        """
        if matrix.shape[1] != self.n_items:
            raise ValueError(f"matrix has {matrix.shape[1]} columns, the model {self.n_items}")
        m = sp.csr_matrix(matrix, dtype=np.float32)
        for start in range(0, m.shape[0], batch_size):
            block = m[start : start + batch_size]
            rows = [
                (block.indices[a:b].astype(np.int64), block.data[a:b])
                for a, b in zip(block.indptr[:-1], block.indptr[1:], strict=True)
            ]
            top_c, top_s, _ = self._ranked(rows, n, None)
            ids = np.where(np.isfinite(top_s), self.movie_ids[top_c], -1)
            yield start, ids, top_s

    # ------------------------------------------------------------------ ratings
    def predict(self, ratings: UserRatings, movie_ids: Iterable[int]) -> dict[int, float | None]:
        """Predicted rating of each movie for the user; ``None`` for movies the model lacks."""
        ids = [int(i) for i in movie_ids]
        cols = self.columns(ids)
        pred, _ = self.score(ratings)
        return {i: (float(pred[c]) if c >= 0 else None) for i, c in zip(ids, cols, strict=True)}

    def _clip(self, x: float) -> float:
        return float(min(max(x, self.rating_min), self.rating_max))

    def user_offset(self, ratings: UserRatings) -> float | None:
        """The user's offset from global mean + movie bias (``ml.model.user_offset``, with the
        model's own shrinkage ``user_bias_reg``); None without ratings."""
        cols, vals = self._encode(ratings)
        if len(cols) == 0:
            return None
        dev = vals - self.global_mean - self._item_bias[cols]
        return float(user_offset(dev.sum(), len(cols), self.model.config.user_bias_reg))

    def predict_with_fallback(
        self, ratings: UserRatings, movie_ids: Iterable[int]
    ) -> list[Prediction]:
        """A prediction for every id, in order, from the best source available.

        ``model`` when the user has known ratings and the movie is in the model; ``bias``
        (global mean + movie bias, or + user offset for an unknown movie) when one side is
        unknown; ``global_mean`` when both are.
        """
        ids = [int(i) for i in movie_ids]
        cols = self.columns(ids)
        offset = self.user_offset(ratings)
        pred = self.score(ratings)[0] if offset is not None else None
        out: list[Prediction] = []
        for c in cols:
            if c >= 0 and pred is not None:
                out.append(Prediction(float(pred[c]), "model"))
            elif c >= 0:
                out.append(
                    Prediction(self._clip(self.global_mean + float(self._item_bias[c])), "bias")
                )
            elif offset is not None:
                out.append(Prediction(self._clip(self.global_mean + offset), "bias"))
            else:
                out.append(Prediction(self._clip(self.global_mean), "global_mean"))
        return out

    # ------------------------------------------------------------------ catalogue
    def similar(self, movie_id: int, n: int = 10) -> list[Scored]:
        """The ``n`` movies most similar to ``movie_id`` by the model's item–item part
        (``Autoencoder.similar``: EASE's weights, or the stored nearest movies by cosine), or,
        for a checkpoint without one, by cosine of the learned item embeddings.

        The movie itself is never returned; an unknown id raises ``KeyError``.
        """
        col = int(self.columns([movie_id])[0])
        if col < 0:
            raise KeyError(f"movie {movie_id} is not known to model {self.version_name}")
        with torch.inference_mode():
            found = self.model.similar(col, n) if self._unit_items is None else None
            if found is None:
                assert self._unit_items is not None
                sims = self._unit_items @ self._unit_items[col]  # (I,)
                sims[col] = -math.inf
                top = torch.topk(sims, min(n, self.n_items - 1))
                found = top.indices, top.values
        cols, scores = (t.cpu().numpy() for t in found)
        return [
            Scored(int(self.movie_ids[c]), float(s), math.nan)
            for c, s in zip(cols, scores, strict=True)
        ]

    def popular(
        self, n: int = 10, allowed: np.ndarray | None = None, offset: int = 0
    ) -> list[Scored]:
        """The most rated movies of the training data (score = number of ratings)."""
        order = self._popular_order
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            order = order[allowed[order]]
        cols = order[offset : offset + n]
        return [
            Scored(
                int(self.movie_ids[c]),
                float(self._popularity[c]),
                self._clip(self.global_mean + float(self._item_bias[c])),
            )
            for c in cols
        ]
