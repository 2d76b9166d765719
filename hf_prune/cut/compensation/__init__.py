"""Compensation methods, by name (:data:`hf_prune.registry.COMPENSATIONS`): :mod:`.bias`, :mod:`.lstsq`."""

from .base import Compensation, TemporaryCompensation, compensate, compensate_scope
from .bias import BiasCompensation, fold_removed_means
from .lstsq import LeastSquaresCompensation, least_squares_weights

__all__ = ["BiasCompensation", "Compensation", "LeastSquaresCompensation", "TemporaryCompensation", "compensate",
           "compensate_scope", "fold_removed_means", "least_squares_weights"]
