"""Training configuration and presets (YAML with ``model:`` and ``training:`` sections)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lotf.potential.model import ConfigError, ModelConfig

PRESET_DIR = Path(__file__).resolve().parents[2] / "models"


def _check_keys(data: dict, cls, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")


@dataclass
class LossTerm:
    kind: str = "mse"  # mse | nll | huber
    weight: float = 1.0
    delta: float = 1.0  # huber only
    # nll only: beta-NLL (Seitzer et al., ICLR 2022) weighs each element's NLL by its variance^beta
    # (held constant in the gradient). 0 is plain NLL (seed 2); 1 gives the mean the gradient of
    # an mse loss while the spread is still fitted to the error, so the mean is not slowed where
    # the spread is small (measured on the water oracle set: README "Ensemble losses")
    beta: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults are seed 1 (BMIM-BF4, eq. 7 and the learning rates)."""

    epochs: int = 500
    batch_size: int = 4
    seed: int = 0
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    lr_embedding: float = 0.01
    lr_network: float = 0.005
    lr_scale: float = 0.001
    lr_shift: float = 0.05
    schedule: str = "linear"  # linear | cyclic_cosine | constant
    end_fraction: float = 1e-3  # linear: final lr / initial lr
    period: int = 40  # cyclic_cosine: epochs per cycle
    decay_factor: float = 0.93  # cyclic_cosine: amplitude decay per cycle
    gradient_clip: float = 1000.0  # global-norm clip; 0 disables
    energy_loss: LossTerm = field(default_factory=lambda: LossTerm("mse", 1.0))
    forces_loss: LossTerm = field(default_factory=lambda: LossTerm("mse", 4.0))
    stress_loss: LossTerm = field(default_factory=lambda: LossTerm("mse", 0.2))
    # "eq7": seed-1 eq. 7 as written, (ΔE)² + λF Σ_i |ΔF_i|²/(3N) + λS |V Δσ|²;
    # "per_atom": energy and virial errors divided by N ((ΔE)²/N, |V Δσ|²/(9N)), as apax does
    loss_normalisation: str = "eq7"
    shift_regularisation: float = 1.0
    # warm start: Adam's moments start at zero, so its first steps are full-size in every
    # direction and throw a converged model away (val loss x4 after one epoch, measured); a
    # linear warm-up over warmup_epochs keeps it (+8 % at most) and the full rates then adapt to
    # new data fastest (lotf bench warmstart; README "Warm starts keep the model").
    # warm_start_epochs (0: epochs) is the budget of a warm-started run, warm_start_lr_factor
    # scales its rates.
    warm_start_lr_factor: float = 1.0
    warmup_epochs: int = 2
    warm_start_epochs: int = 0
    # warm start: the share of each epoch's draws that go to the structures the starting model
    # was not trained on (found by fingerprint, training_frames.json of its directory); old
    # structures are drawn without replacement, new ones cycled, so an epoch keeps its length
    # and cost. 0 (default, as seed 1 and apax) draws uniformly. 0.8 needed 66 warm epochs
    # against 120 uniform (lotf bench warmstart, three data seeds) and lowered the water demo's
    # test force MAE, but stalled the BMIM-BF4 oracle loop, whose warm starts are short and
    # still learning their old data: README "Warm starts keep the model"
    warm_start_new_fraction: float = 0.0
    # warm start: refit the per-element shift when the labels' energy zero moved, as when DFT+D3
    # labels become DFT labels ("auto": when the ridge fit of the model's residuals moves energies
    # by more than refit_shift_threshold meV/atom and 3x the model's training RMSE, and halves the
    # residuals; see trainer.refit_shift), "always" or "never"
    refit_shift: str = "auto"
    refit_shift_threshold: float = 5.0
    patience: int = 0  # stop after this many epochs without improvement; 0 disables
    # which epoch is kept: "error" (default) scores the ensemble mean with the training loss's
    # weights and normalisation, every NLL term read as the mean's squared error; "loss" is the
    # training loss itself. An NLL validation loss on a handful of frames rewards a calibrated
    # spread as much as a smaller error: measured on a BMIM-BF4 oracle warm start, epoch 6 cut
    # the validation force MAE from 132 to 122 meV/Å yet lost on NLL, so epoch 0 was kept and
    # eleven iterations returned the same model (README "Which epoch is kept")
    select_on: str = "error"
    # frames (training and validation) whose largest reference force component exceeds this
    # (eV/Å) are left out; 0 keeps all. A rigidly compressed box or a packed box with a close
    # contact carries forces of 30-5000 eV/Å beside a liquid's 2-8: one such label dominates every
    # batch it is in (BMIM-BF4 oracle: five warm starts in a row kept their starting model)
    max_label_force: float = 0.0
    progress: bool = True

    def __post_init__(self):
        for name in ("energy_loss", "forces_loss", "stress_loss"):
            value = getattr(self, name)
            if isinstance(value, dict):
                _check_keys(value, LossTerm, f"training config '{name}'")
                value = LossTerm(**value)
                setattr(self, name, value)
            if value.kind not in ("mse", "nll", "huber"):
                raise ConfigError(f"training config: '{name}.kind' must be mse, nll or huber (got {value.kind!r})")
        checks = [
            ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
            ("optimizer", self.optimizer in ("adam", "adamw")),
            ("schedule", self.schedule in ("linear", "cyclic_cosine", "constant")),
            ("period", self.period >= 1), ("gradient_clip", self.gradient_clip >= 0),
            ("loss_normalisation", self.loss_normalisation in ("eq7", "per_atom")),
            ("warm_start_lr_factor", self.warm_start_lr_factor > 0), ("warmup_epochs", self.warmup_epochs >= 0),
            ("warm_start_epochs", self.warm_start_epochs >= 0),
            ("warm_start_new_fraction", 0 <= self.warm_start_new_fraction < 1),
            ("refit_shift", self.refit_shift in ("auto", "always", "never")),
            ("refit_shift_threshold", self.refit_shift_threshold >= 0),
            ("select_on", self.select_on in ("error", "loss")), ("max_label_force", self.max_label_force >= 0),
        ]
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"training config: invalid value for '{key}': {getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        _check_keys(data, cls, "training config")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def uses_nll(self) -> bool:
        return any(t.kind == "nll" for t in (self.energy_loss, self.forces_loss, self.stress_loss))


def check_compatible(model: dict[str, Any] | ModelConfig, training: TrainConfig, where: str = "config") -> None:
    """Model and training settings that only fail together, e.g. NLL without an ensemble spread."""
    n_members = model.n_members if isinstance(model, ModelConfig) else int(model.get("n_members", 1))
    if training.uses_nll() and n_members < 2:
        raise ConfigError(f"{where}: the NLL loss needs an ensemble spread, but the model has n_members={n_members} "
                          f"(use n_members >= 2 or an mse loss)")


def load_preset(path_or_name: str | Path, overrides: dict | None = None) -> tuple[dict, TrainConfig]:
    """Read a preset; returns (model config dict without species, TrainConfig).

    ``path_or_name`` is a YAML path or the stem of a file in ``models/``. ``overrides`` is
    ``{"model": {...}, "training": {...}}`` merged on top (unknown keys fail).
    """
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{path_or_name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"model preset not found: {path_or_name}")
    data = yaml.safe_load(path.read_text()) or {}
    for key in data:
        if key not in ("model", "training"):
            raise ConfigError(f"{path}: unknown section '{key}' (expected 'model' and 'training')")
    model = dict(data.get("model") or {})
    training = dict(data.get("training") or {})
    for key in overrides or {}:
        if key not in ("model", "training"):
            raise ConfigError(f"overrides: unknown section '{key}'")
    model.update((overrides or {}).get("model") or {})
    training.update((overrides or {}).get("training") or {})
    ModelConfig.from_dict(model)  # validate keys now, before any compute
    training = TrainConfig.from_dict(training)
    check_compatible(model, training, str(path))
    return model, training
