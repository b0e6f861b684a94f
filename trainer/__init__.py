"""Adversarially robust training: Generalist (bi-expert AT), PGD-AT, TRADES and natural training."""

__version__ = "0.1.0"
