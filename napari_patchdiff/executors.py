"""Where the runs execute (here or on a Ray cluster): the module lives in
:mod:`napari_patchdiff.recon.executors` with the rest of the reconstruction; this one keeps the
old import path (``from napari_patchdiff.executors import RayExecutor``)."""
from .recon.executors import (CLUSTER_CHOICES, LOCAL, Executor, ItemEvent, LocalExecutor,
                              OperatorRecipe, RayExecutor, Work, parse_cluster, ray_available,
                              resolve_executor)

__all__ = ["Executor", "LocalExecutor", "LOCAL", "RayExecutor", "ItemEvent", "Work",
           "resolve_executor", "parse_cluster", "CLUSTER_CHOICES", "OperatorRecipe",
           "ray_available"]
