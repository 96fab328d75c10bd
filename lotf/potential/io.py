"""A trained model is a directory: ``config.yaml`` + ``params.msgpack`` (+ metrics, learning curve)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import yaml
from flax import serialization

from lotf.potential.calculator import LotfCalculator, gmnn_term
from lotf.potential.model import Model, ModelConfig

CONFIG_FILE = "config.yaml"
PARAMS_FILE = "params.msgpack"
METRICS_FILE = "metrics.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_model(directory: str | Path, config: ModelConfig, params, *, training: dict | None = None,
               metrics: dict | None = None) -> Path:
    from lotf import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"lotf_version": __version__, "model": config.to_dict()}
    if training is not None:
        meta["training"] = training
    _atomic_write(directory / CONFIG_FILE, yaml.safe_dump(meta, sort_keys=False).encode())
    state = jax.tree_util.tree_map(lambda x: jax.device_get(x), params)
    _atomic_write(directory / PARAMS_FILE, serialization.msgpack_serialize(serialization.to_state_dict(state)))
    if metrics is not None:
        _atomic_write(directory / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    return directory


def load_model(directory: str | Path) -> tuple[Model, Any, dict]:
    """Return (model, params, metadata) of a model directory."""
    directory = Path(directory)
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: not a lotf model directory (missing {name})")
    meta = yaml.safe_load((directory / CONFIG_FILE).read_text())
    config = ModelConfig.from_dict(meta["model"])
    params = serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes())
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return Model(config), params, meta


def load_calculator(directory: str | Path, *, members: bool = True, skin: float = 0.5,
                    extra_terms: list | None = None, **kwargs) -> LotfCalculator:
    """ASE calculator of a trained model directory (optionally plus extra terms such as D3)."""
    model, params, _ = load_model(directory)
    terms = [gmnn_term(model, params)] + list(extra_terms or [])
    return LotfCalculator(terms, model.config.species, members=members, skin=skin, **kwargs)
