"""ZnTrack nodes: thin wrappers over the library (parameters in, files out)."""

from lotf.nodes.d3 import RecomputeD3
from lotf.nodes.frames import FilterOutliers, LoadFrames, MergeFrames
from lotf.nodes.label import CP2KLabel
from lotf.nodes.sampling import GeometryOptimisation, MDSampling
from lotf.nodes.selection import MaxDistSelection, RandomSelection, UncertaintySelection
from lotf.nodes.train import TrainModel

__all__ = ["CP2KLabel", "FilterOutliers", "GeometryOptimisation", "LoadFrames", "MDSampling", "MaxDistSelection", "MergeFrames", "RandomSelection",
           "RecomputeD3", "TrainModel", "UncertaintySelection"]
