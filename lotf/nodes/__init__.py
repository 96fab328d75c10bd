"""ZnTrack nodes: thin wrappers over the library (parameters in, files out)."""

from lotf.nodes.frames import LoadFrames
from lotf.nodes.selection import MaxDistSelection, RandomSelection, UncertaintySelection
from lotf.nodes.train import TrainModel

__all__ = ["LoadFrames", "MaxDistSelection", "RandomSelection", "TrainModel", "UncertaintySelection"]
