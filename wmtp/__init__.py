"""weighted-mtp trainer: the model, data, weighting, training loop and evaluation.

Runs inside the container (under torchrun); holds no CLI or templating code.
"""

__version__ = "0.1.0"
