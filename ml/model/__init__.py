"""The model as named parts (docs/model.md):

- ``config``: every knob (:class:`ModelConfig`);
- ``baseline``: μ, the movie biases, the user offset (:func:`user_offset`);
- ``linear``: the linear item–item autoencoders in closed form — EASE (:func:`ease_weights`) and
  the residual ridge — with their λ tuning;
- ``item_codes``: the item-row autoencoder's codes and the per-request fold-in;
- ``ranking``: the top k of score rows, ranks as scores;
- ``autoencoder``: the deep stacked autoencoder (encoder, rating head, ranking head) and the
  blend of every part with the re-ranking by predicted rating (:class:`Autoencoder`).

The names below are the package's surface; ``from ml.model import X`` is how the rest of the
code reaches them.
"""

from ml.model.autoencoder import Autoencoder, SparseUsers
from ml.model.baseline import bias_statistics, residual_matrix, user_offset, user_offsets
from ml.model.config import ACTIVATIONS, RANKING_LOSSES, RETIRED, ModelConfig
from ml.model.item_codes import fold_in_codes, fold_in_duals, train_item_codes
from ml.model.linear import (
    GramSolver,
    _dense_rows,
    ease_weights,
    ridge_item_weights,
    tune_ease_lambda,
    tune_ridge_lambda,
)
from ml.model.ranking import ranks_as_scores, top_k_columns

__all__ = [
    "ACTIVATIONS",
    "RANKING_LOSSES",
    "RETIRED",
    "Autoencoder",
    "GramSolver",
    "ModelConfig",
    "SparseUsers",
    "_dense_rows",
    "bias_statistics",
    "ease_weights",
    "fold_in_codes",
    "fold_in_duals",
    "ranks_as_scores",
    "residual_matrix",
    "ridge_item_weights",
    "top_k_columns",
    "train_item_codes",
    "tune_ease_lambda",
    "tune_ridge_lambda",
    "user_offset",
    "user_offsets",
]
