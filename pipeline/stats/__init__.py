"""Proportion tests, confidence intervals and multiple-testing correction for regressions."""

from pipeline.stats.proportions import adjust_p_values, category_stat, increase_p_value, wilson_interval
from pipeline.stats.regression import compare

__all__ = ["adjust_p_values", "category_stat", "compare", "increase_p_value", "wilson_interval"]
