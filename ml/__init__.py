"""Offline machine learning for movierec: data loading, the autoencoder, training, checkpoints,
evaluation and the inference object the web service serves with.

This package never imports ``app``, FastAPI or the ORM; it reads the store with one SQL query
against the table contract and hands the service a checkpoint directory.
"""
