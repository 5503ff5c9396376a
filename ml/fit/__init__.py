"""Fitting the model: configuration and presets (``config``), the training loop with DDP and
validation (``loop``), the finishing steps on a held-out slice (``finish``) and the one pipeline
store → fit → finish → checkpoint (``pipeline``) behind ``movierec train``, the worker and
``torchrun -m ml.train``."""
