"""Shared pieces of the campaign definitions: profiles, iteration rows, one active-learning step.

An iteration is one row of a table (a dict); :func:`check_row` rejects unknown keys at build
time, naming the campaign, the iteration and the key. :func:`learning_step` turns a row into
nodes: sample -> (geometry optimisation) -> select -> label -> merge -> train (warm start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lotf.nodes import CP2KLabel, MaxDistSelection, RandomSelection, TrainModel
from lotf.nodes.frames import MergeFrames
from lotf.nodes.reference import ForceFieldLabel
from lotf.nodes.report import CampaignReport
from lotf.nodes.sampling import GeometryOptimisation, MDSampling

PROFILES = ("paper", "smoke", "oracle")

ROW_KEYS = {
    "name",  # group name, e.g. "ML7"
    "start",  # "previous" (last frame of the previous sampling), or a named structure source
    "sampling",  # dict of MDSampling parameters (method, ensemble, temperature, steps, modifiers, ...)
    "geo_opt",  # bool: add a FIRE geometry optimisation of the last MD frame to the pool
    "n_select",  # new training structures per iteration (MaxDist)
    "n_validation",  # new validation structures per iteration (random), default 0
    "selection",  # "max_dist" (default) or "random"
}


class BuildError(ValueError):
    """A campaign definition problem, reported at build time."""


def check_profile(campaign: str, profile: str, known=PROFILES) -> None:
    if profile not in known:
        raise BuildError(f"{campaign}: unknown profile '{profile}' (known: {', '.join(known)})")


def labeller(reference: dict[str, Any]):
    """Node factory ``label(data, name=None)`` for a campaign's reference.

    ``{"cp2k": settings file, "n_ranks": .., "n_threads": ..}`` labels with CP2K (DFT, xTB);
    ``{"forcefield": "water", "cutoff": ..}`` with the OpenMM force field (oracle profiles).
    """
    options = dict(reference)
    if "cp2k" in options:
        settings = options.pop("cp2k")
        return lambda data, name=None: CP2KLabel(data=data, settings=settings, **options,
                                                 **({"name": name} if name else {}))
    if "forcefield" in options:
        return lambda data, name=None: ForceFieldLabel(data=data, **options, **({"name": name} if name else {}))
    raise BuildError(f"reference: needs 'cp2k' or 'forcefield' (got {', '.join(options) or 'nothing'})")


def check_row(campaign: str, row: dict[str, Any]) -> None:
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise BuildError(f"{campaign} iteration {row.get('name', '?')}: unknown setting '{sorted(unknown)[0]}' "
                         f"(known: {', '.join(sorted(ROW_KEYS))})")
    for key in ("name", "sampling", "n_select"):
        if key not in row:
            raise BuildError(f"{campaign} iteration {row.get('name', '?')}: missing setting '{key}'")
    if row.get("selection", "max_dist") not in ("max_dist", "random"):
        raise BuildError(f"{campaign} iteration {row['name']}: unknown selection '{row['selection']}'")


@dataclass
class CampaignState:
    """What flows from one iteration to the next (names of nodes, not mutated objects)."""

    model: TrainModel
    train: Any  # node with frames: the current training set
    validation: Any  # node with frames: the current validation set
    last_structure: Any  # node with frames whose last frame starts the next sampling
    log: list = field(default_factory=list)  # (iteration, model, sampler, label) for the report

    def record(self, name: str, sampler: Any = None, label: Any = None) -> None:
        self.log.append((name, self.model, sampler, label))


def report(state: CampaignState, test_data: Any) -> CampaignReport:
    """The campaign's per-iteration table; call inside the campaign's report group."""
    sampled = [(name, s, lab) for name, _, s, lab in state.log if s is not None]
    return CampaignReport(iterations=[entry[0] for entry in state.log], models=[entry[1] for entry in state.log],
                          sampled_iterations=[name for name, _, _ in sampled],
                          samplers=[s for _, s, _ in sampled], labels=[lab for _, _, lab in sampled],
                          test_data=test_data.frames)


def learning_step(row: dict[str, Any], state: CampaignState, *, start: Any, label, model_config: str,
                  model_overrides: dict, seed: int) -> CampaignState:
    """Nodes of one iteration; call inside ``project.group(campaign, row["name"])``."""
    md = MDSampling(model=state.model, data=start.frames, data_id=-1, seed=seed, **row["sampling"])
    pool = [md.frames]
    last = md
    if row.get("geo_opt", False):
        geo = GeometryOptimisation(model=state.model, data=md.frames, data_id=-1)
        pool.append(geo.frames)
        last = geo
    candidates = MergeFrames(data=pool, name="Pool") if len(pool) > 1 else md
    validation = state.validation
    if row.get("n_validation", 0):
        val_pick = RandomSelection(data=candidates.frames, n_configurations=row["n_validation"], seed=seed,
                                   name="ValidationPick")
        val_label = label(val_pick.frames, name="ValidationLabel")
        validation = MergeFrames(data=[state.validation.frames, val_label.frames], name="Validation")
        candidates = val_pick  # pick training points from what is left
        pool_frames = val_pick.excluded_frames
    else:
        pool_frames = candidates.frames
    if row.get("selection", "max_dist") == "random":
        pick = RandomSelection(data=pool_frames, n_configurations=row["n_select"], seed=seed)
    else:
        pick = MaxDistSelection(data=pool_frames, train_data=state.train.frames, model=state.model,
                                n_configurations=row["n_select"])
    labelled = label(pick.frames)
    train = MergeFrames(data=[state.train.frames, labelled.frames], name="TrainingSet")
    model = TrainModel(data=train.frames, validation_data=validation.frames, config=model_config,
                       overrides=model_overrides, init_from=state.model)
    new = CampaignState(model=model, train=train, validation=validation, last_structure=last, log=state.log)
    new.record(row["name"], sampler=md, label=labelled)
    return new
