"""Compensation methods, by name (:data:`hf_prune.registry.COMPENSATIONS`): :mod:`.bias`, :mod:`.lstsq`, :mod:`.obs`."""

from .base import Compensation, TemporaryCompensation, choose_groups, compensate, compensate_scope
from .bias import BiasCompensation, fold_removed_means
from .lstsq import LeastSquaresCompensation, least_squares_weights
from .obs import OptimalBrainSurgeonCompensation, obs_kept_groups

__all__ = ["BiasCompensation", "Compensation", "LeastSquaresCompensation", "OptimalBrainSurgeonCompensation",
           "TemporaryCompensation", "choose_groups", "compensate", "compensate_scope", "fold_removed_means",
           "least_squares_weights", "obs_kept_groups"]
