"""Training node: frames in, a model directory (plus metrics and learning curve) out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import zntrack

from lotf.potential.calculator import LotfCalculator


class TrainModel(zntrack.Node):
    """Train a GMNN ensemble on ``data``, validate on ``validation_data``.

    ``data`` and ``validation_data`` are lists of ase.Atoms from any node's ``frames`` (ours or
    IPSuite's). ``config`` is a preset file in ``models/`` (tracked by DVC as a params file);
    ``overrides`` patches it ({"model": {...}, "training": {...}}). ``init_from`` is an earlier
    TrainModel to warm-start from (the next active-learning iteration continues the last one).
    """

    data: list = zntrack.deps()
    validation_data: list = zntrack.deps()
    config: str = zntrack.params_path("models/bmim_initial.yaml")
    overrides: dict = zntrack.params(default_factory=dict)
    init_from: "TrainModel | None" = zntrack.deps(None)

    model_dir: Path = zntrack.outs_path(zntrack.nwd / "model")
    metrics: dict = zntrack.metrics()
    learning_curve: pd.DataFrame = zntrack.plots(x="epoch", y=["train_loss", "val_loss"], x_label="epoch",
                                                 y_label="loss", title="learning curve")

    def run(self) -> None:
        from lotf.nodes.revision import local_path
        from lotf.training.config import load_preset
        from lotf.training.trainer import train

        model_cfg, train_cfg = load_preset(self.config, self.overrides)
        train_cfg.progress = True
        init = local_path(self.init_from, self.init_from.model_dir) if self.init_from is not None else None
        from lotf.nodes.frames import flatten

        result = train(flatten(self.data), flatten(self.validation_data), model_cfg, train_cfg, self.model_dir,
                       init_from=init)
        self.metrics = {k: float(v) for k, v in result.metrics.items()}
        self.learning_curve = pd.DataFrame(result.history)

    def get_calculator(self, directory=None, **options) -> LotfCalculator:
        """ASE calculator of the trained model (IPSuite's NodeWithCalculator protocol)."""
        from lotf.nodes.revision import local_path
        from lotf.potential.io import load_calculator

        # a node loaded from another revision reads that revision's model, never the workspace's
        return load_calculator(local_path(self, self.model_dir), **options)
