"""Training throughput of lotf against apax, side by side in one run (issue: "training at least 2x apax").

The same ten 300-atom BMIM-BF4 frames as ``lotf bench potential``'s training rate (random
energy, force and stress labels; 8 training, 2 validation), seed-1 hyperparameters in both codes:
Gaussian basis 7 (r 0.7-5.5 Å), 5 radial functions, 8 contractions, 512-512, ensemble of 2
(shallow and full), energy + forces + stress MSE (weights 1, 4, 0.2), batch 2, fp32 descriptor.
Throughput is structures per second from the median epoch time of each code's own log
(epochs 2 and later: epoch 1 compiles), validation included in both.

apax is not a lotf dependency; install it into its own environment (it must use the same JAX)::

    uv venv /tmp/apaxenv --python 3.11 && VIRTUAL_ENV=/tmp/apaxenv uv pip install apax==0.14.0
    .venv/bin/python benchmarks/apax_training.py --apax /tmp/apaxenv/bin/apax

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path


def frames(n: int = 10):
    from lotf.bench import bmim_bf4_box, training_frames

    return training_frames(bmim_bf4_box(10), n)


def apax_rate(apax: str, train_file: Path, val_file: Path, ensemble: str, epochs: int, n_train: int) -> float:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        config = {"n_epochs": epochs, "seed": 1, "data_parallel": False,
                  "data": {"directory": tmp, "experiment": "run", "train_data_path": str(train_file),
                           "val_data_path": str(val_file), "n_train": n_train, "n_valid": 2, "batch_size": 2,
                           "valid_batch_size": 2, "dataset": {"processing": "cached"}},
                  "model": {"name": "gmnn", "basis": {"name": "gaussian", "n_basis": 7, "r_min": 0.7, "r_max": 5.5},
                            "n_radial": 5, "n_contr": 8, "nn": [512, 512], "calc_stress": True,
                            "descriptor_dtype": "fp32", "ensemble": {"kind": ensemble, "n_members": 2}},
                  "loss": [{"name": "energy", "loss_type": "mse", "weight": 1.0},
                           {"name": "forces", "loss_type": "mse", "weight": 4.0},
                           {"name": "stress", "loss_type": "mse", "weight": 0.2}],
                  "progress_bar": {"disable_epoch_pbar": True, "disable_batch_pbar": True}}
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([apax, "train", str(path)], check=True, capture_output=True, text=True)
        import pandas as pd

        log = pd.read_csv(Path(tmp) / "run" / "log.csv")
    return n_train / float(log["epoch_time"].iloc[2:].median())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apax", required=True, help="the apax command of an environment with apax installed")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    import ase.io

    from lotf.bench import training_rate

    data = frames()
    train, val = data[:8], data[8:]
    out = {"n_atoms": len(train[0]), "n_train": len(train), "n_val": len(val), "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        train_file, val_file = Path(tmp) / "train.extxyz", Path(tmp) / "val.extxyz"
        ase.io.write(train_file, train)
        ase.io.write(val_file, val)
        for ensemble in ("shallow", "full"):
            mine = training_rate(train, val, ensemble, args.epochs)
            theirs = apax_rate(args.apax, train_file, val_file, ensemble, args.epochs, len(train))
            out[f"lotf_{ensemble}_structures_per_s"] = mine
            out[f"apax_{ensemble}_structures_per_s"] = theirs
            out[f"ratio_{ensemble}"] = mine / theirs
    print(json.dumps(out))


if __name__ == "__main__":
    main()
