"""Posterior ensembles, antithetic pairs, uncertainty maps and calibration.

A diffusion reconstruction is one draw from a distribution. :mod:`.ensemble` draws ``N`` of them
from any registered diffusion sampler under a noise design and collects them;
:mod:`.summaries` turns the stack into a mean, a per-pixel standard deviation, per-pixel
credible bounds, the within-pair correlation (antithetic), a region statistic with a confidence
interval right for the design (:mod:`.regions`), and, with the truth, coverage and a
calibration curve.
"""
from .ensemble import (BATCH_SLICES, DESIGNS, Accumulator, SampleEvent, default_batch, ensemble,
                       run_ensemble)
from .regions import parse_region, parse_roi, region_note, roi_mask
from .summaries import (LEVELS, EnsembleResult, calibration_curve, calibration_figure,
                        check_level, pair_correlation, region_interval, summarise)

__all__ = ["DESIGNS", "BATCH_SLICES", "LEVELS", "SampleEvent", "Accumulator", "EnsembleResult",
           "default_batch", "ensemble", "run_ensemble", "summarise", "check_level", "roi_mask",
           "parse_roi", "parse_region", "region_note",
           "calibration_curve", "calibration_figure", "region_interval", "pair_correlation"]
