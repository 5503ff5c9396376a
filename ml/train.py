"""``python -m ml.train``: train on the store and write a checkpoint (DDP under
``torchrun --nproc-per-node K -m ml.train ...``). The pipeline lives in :mod:`ml.fit.pipeline`."""

from __future__ import annotations

import sys

from ml.fit.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
