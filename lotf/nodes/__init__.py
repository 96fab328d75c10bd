"""ZnTrack nodes: thin wrappers over the library (parameters in, files out).

The names below load their module on first use: every DVC stage is a fresh ``zntrack run``
process that needs one node class, so importing all node modules (CP2K tools, Dask, Optax, ...)
for each stage would only add start-up time.
"""

import importlib

_MODULES = {
    "CP2KLabel": "label", "FilterOutliers": "frames", "GeometryOptimisation": "sampling", "LoadFrames": "frames",
    "MDSampling": "sampling", "MaxDistSelection": "selection", "MergeFrames": "frames", "ProductionMD": "production",
    "RandomSelection": "selection", "RecomputeD3": "d3", "TrainModel": "train", "UncertaintySelection": "selection",
    "ForceFieldLabel": "reference", "ReferenceMD": "reference", "LastFrameSelection": "selection",
}

__all__ = sorted(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(f"lotf.nodes.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'lotf.nodes' has no attribute '{name}'")
