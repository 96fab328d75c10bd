"""ZnTrack selection nodes: random, MaxDist on last-layer gradients, uncertainty.

Thin wrappers over :mod:`lotf.selection`. Every node takes ``data`` (a list of ``ase.Atoms``,
e.g. ``other_node.frames``) and writes (IPSuite convention, so splits chain):

* ``selected_ids``: indices into ``data`` in pick order (the first k of a MaxDist run are
  its k-point selection);
* ``frames``: the selected structures (``frames.h5``, in pick order);
* ``excluded_frames``: the rest of ``data`` in its original order (``excluded_frames.h5``),
  e.g. ``RandomSelection(data=test_split.excluded_frames, ...)`` for the next split.

Both frame lists are stored as H5MD, so downstream nodes never re-read the whole pool.

``screening`` (see :mod:`lotf.selection.screening`) drops unphysical candidates before the rule
runs: atoms closer than a per-element-pair threshold and, with ``intact_molecules`` and
``screening_reference`` (structures with intact molecules), structures whose bond graph has a
molecule the reference does not have. Screened structures are in neither ``frames`` nor
``excluded_frames``; the metrics count them (``n_screened``, per reason), and ``screened.json``
lists each one with its reason.
"""

from __future__ import annotations

import logging
import time
import typing as t
from pathlib import Path

import ase
import numpy as np
import pandas as pd
import zntrack

from lotf.nodes.frames import read_h5md, write_h5md
from lotf.selection import rules

log = logging.getLogger(__name__)


class _Selection(zntrack.Node):
    """Shared outputs of the selection nodes; subclasses implement :meth:`select`."""

    data: list[ase.Atoms] = zntrack.deps()
    screening: dict | None = zntrack.params(None)
    screening_reference: list | None = zntrack.deps(None)

    selected_ids: list[int] = zntrack.outs(independent=True)
    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    excluded_frames_path: Path = zntrack.outs_path(zntrack.nwd / "excluded_frames.h5")
    screened_path: Path = zntrack.outs_path(zntrack.nwd / "screened.json")
    metrics: dict = zntrack.metrics()

    def select(self, frames: list[ase.Atoms], n: int | None) -> tuple[np.ndarray, dict]:
        """Indices into ``frames`` in pick order (``n`` of them) and extra metrics."""
        raise NotImplementedError

    def nothing_to_select(self) -> None:
        """Set the outputs :meth:`select` would have set, for an empty (or fully screened) pool."""

    def _screen(self, frames: list[ase.Atoms]) -> tuple[np.ndarray, dict]:
        """Indices of the frames that pass the screening, and its counts (written to screened.json)."""
        import json

        from lotf.nodes.frames import flatten
        from lotf.selection import screening as scr

        settings = scr.Screening.from_dict(self.screening)
        reference = None
        if settings is not None and settings.intact_molecules:
            reference = scr.reference_kinds(flatten(self.screening_reference)[:1], settings.bond_factor)
        result = scr.screen(frames, settings, reference)
        dropped = [{"index": k, "reason": r, "detail": d}
                   for k, (r, d) in enumerate(zip(result.reasons, result.details)) if r is not None]
        Path(self.screened_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.screened_path).write_text(json.dumps(dropped, indent=1))
        if dropped:
            log.warning("%s: %d of %d candidates screened out (first: %s, %s)", self.name, len(dropped),
                        len(frames), dropped[0]["reason"], dropped[0]["detail"])
        return np.flatnonzero(result.keep), (result.counts() if settings is not None else {})

    def run(self) -> None:
        frames = list(self.data)
        start = time.perf_counter()
        kept, screened = self._screen(frames)
        pool = [frames[k] for k in kept]
        requested = getattr(self, "n_configurations", None)
        n = requested
        if requested is not None and len(pool) < requested:
            # a sampler that stopped early (or reset on every frame) leaves a short pool: select
            # what exists and record the shortfall rather than break the graph
            log.warning("%s: %d structures requested from a pool of %d; selecting all of them", self.name,
                        requested, len(pool))
            n = len(pool)
        if pool:
            ids, extra = self.select(pool, n)
        else:  # an MD run that stopped before its first frame, or every candidate screened out
            log.warning("%s: nothing to select from (%d candidates, %d screened out)", self.name, len(frames),
                        len(frames) - len(pool))
            self.nothing_to_select()
            ids, extra = [], {}
        if requested is not None:
            extra = {"n_requested": requested, **extra}
        ids = [int(kept[i]) for i in ids]  # indices into data
        chosen = set(ids)
        write_h5md(self.frames_path, [frames[i] for i in ids])
        write_h5md(self.excluded_frames_path, [frames[i] for i in kept if i not in chosen])
        self.selected_ids = ids
        self.metrics = {"n_pool": len(frames), "n_selected": len(ids), **screened,
                        "time_s": round(time.perf_counter() - start, 3), **extra}

    @property
    def frames(self) -> list[ase.Atoms]:
        """The selected structures, in pick order."""
        return read_h5md(self, self.frames_path)

    @property
    def excluded_frames(self) -> list[ase.Atoms]:
        """The structures of ``data`` that were not selected, in their original order."""
        return read_h5md(self, self.excluded_frames_path)


class RandomSelection(_Selection):
    """``n_configurations`` structures drawn without replacement with ``seed``."""

    n_configurations: int = zntrack.params()
    seed: int = zntrack.params(1234)

    def select(self, frames, n):
        return rules.random_selection(len(frames), n, self.seed), {}


class LastFrameSelection(_Selection):
    """The last ``n_configurations`` structures of ``data`` that pass the screening, last first.

    What an iteration hands on to the next one (``stages.common.learning_step``): the last MD or
    FIRE structure that is not collapsed and has intact molecules, never a screened one (a FIRE
    step of a poor model that formed a bond would otherwise start every later iteration, and
    every later pool would be screened out).
    """

    n_configurations: int = zntrack.params(1)

    def select(self, frames, n):
        return np.arange(len(frames) - 1, len(frames) - 1 - n, -1), {}


def model_and_params(model: t.Any):
    """(Model, params) from a model directory, a node with ``model_dir``, or a node whose
    ``get_calculator()`` returns a lotf calculator; anything else fails with one line."""
    from lotf.potential.io import load_model
    from lotf.potential.model import Model

    from lotf.nodes.revision import model_directory

    model_dir = model_directory(model)  # a node of another revision: that revision's model
    if model_dir is not None:
        loaded, params, _ = load_model(model_dir)
        return loaded, params
    if hasattr(model, "get_calculator"):
        calc = model.get_calculator()
        term = (getattr(calc, "terms", None) or [None])[0]
        fn = getattr(term, "fn", None)
        owner = getattr(fn, "__self__", None) or getattr(fn, "model", None)  # method or MemberwiseEnergy
        if isinstance(owner, Model):
            return owner, term.params
    raise TypeError(f"model: {type(model).__name__} is neither a lotf model directory nor a node with "
                    "'model_dir' or a lotf 'get_calculator()'")


class MaxDistSelection(_Selection):
    """Greedy MaxDist in the last-layer-gradient feature space of ``model`` (seed 1).

    The first pick is the pool structure farthest from ``train_data``; each later pick is the
    one farthest from ``train_data`` and every earlier pick (see :mod:`lotf.selection.rules`).

    Attributes:
        data: the pool.
        train_data: the current training set (may be empty).
        model: a training node (``model_dir``), a model directory, or a node whose
            ``get_calculator()`` is a lotf calculator.
        n_configurations: structures to pick.
        batch_size: structures per feature batch (memory, not results).
    """

    train_data: list[ase.Atoms] = zntrack.deps()
    model: t.Any = zntrack.deps()
    n_configurations: int = zntrack.params()
    batch_size: int = zntrack.params(16)

    distances: pd.DataFrame = zntrack.plots(x="pick", y="distance", x_label="pick",
                                            y_label="max-min feature distance", title="MaxDist")

    def nothing_to_select(self) -> None:
        self.distances = pd.DataFrame({"pick": np.arange(0), "distance": np.zeros(0)})

    def select(self, frames, n):
        from lotf.selection.features import FeatureMap

        rules.check_count(n, len(frames))
        model, params = model_and_params(self.model)
        feature_map = FeatureMap(model, params, batch_size=self.batch_size)
        train = list(self.train_data or [])
        pool_features = feature_map(frames, desc="pool")
        train_features = feature_map(train, desc="train") if train else None
        result = rules.max_dist_selection(pool_features, n, train_features)
        self.distances = pd.DataFrame({"pick": np.arange(len(result.indices)), "distance": result.distances})
        return result.indices, {"n_train": len(train), "n_features": feature_map.n_features,
                                "first_distance": float(result.distances[0]),
                                "last_distance": float(result.distances[-1])}


class UncertaintySelection(_Selection):
    """The most uncertain structures: top ``n_configurations``, all above ``threshold``, or the
    top ``n_configurations`` of those above ``threshold``.

    Uncertainties are read from the frames (``calc.results``, ``info`` or ``arrays``) or, with
    ``model`` (a node with ``get_calculator()`` or ``model_dir``), computed by its calculator.
    ``key`` is e.g. ``forces_uncertainty`` (per-atom norms, then ``reduction`` max or mean over
    atoms) or ``energy_uncertainty``.
    """

    model: t.Any = zntrack.deps(None)
    key: str = zntrack.params("forces_uncertainty")
    reduction: str = zntrack.params("max")
    n_configurations: int | None = zntrack.params(None)
    threshold: float | None = zntrack.params(None)

    uncertainties: pd.DataFrame = zntrack.plots(x="frame", y="uncertainty", x_label="frame",
                                                y_label="uncertainty", title="uncertainty")

    def _calculator(self):
        if self.model is None:
            return None
        if hasattr(self.model, "get_calculator"):
            return self.model.get_calculator()
        from lotf.potential.io import load_calculator

        from lotf.nodes.revision import model_directory

        model_dir = model_directory(self.model)
        if model_dir is None:
            raise TypeError(f"model: {type(self.model).__name__} has neither 'get_calculator()' nor 'model_dir'")
        return load_calculator(model_dir)

    def nothing_to_select(self) -> None:
        self.uncertainties = pd.DataFrame({"frame": np.arange(0), "uncertainty": np.zeros(0),
                                           "selected": np.zeros(0, bool)})

    def select(self, frames, n):
        if n is None and self.threshold is None:
            raise rules.SelectionError("UncertaintySelection: give n_configurations, threshold or both")
        if n is not None:
            rules.check_count(n, len(frames))
        values = rules.uncertainty_values(frames, self.key, self.reduction, self._calculator())
        ids = rules.uncertainty_selection(values, n, self.threshold)
        picked = np.zeros(len(frames), bool)
        picked[ids] = True
        self.uncertainties = pd.DataFrame({"frame": np.arange(len(frames)), "uncertainty": values,
                                           "selected": picked})
        extra = {"max_uncertainty": float(values.max()), "mean_uncertainty": float(values.mean())}
        if len(ids):
            extra["min_selected_uncertainty"] = float(values[ids].min())
        return ids, extra
