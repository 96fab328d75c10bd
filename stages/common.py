"""Shared pieces of the campaign definitions: profiles, iteration rows, one active-learning step.

An iteration is one row of a table (a dict); :func:`check_row` rejects unknown keys at build
time, naming the campaign, the iteration and the key. :func:`learning_step` turns a row into
nodes: sample -> (geometry optimisation) -> select -> label -> merge -> train (warm start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lotf.nodes import CP2KLabel, LastFrameSelection, MaxDistSelection, RandomSelection, TrainModel
from lotf.nodes.frames import MergeFrames
from lotf.nodes.reference import ForceFieldLabel
from lotf.nodes.report import CampaignReport
from lotf.nodes.sampling import GeometryOptimisation, MDSampling

PROFILES = ("paper", "smoke", "oracle")

ROW_KEYS = {
    "name",  # group name, e.g. "ML7"
    "kind",  # "sampling" (default): MD -> select -> label; a campaign may define others (e.g. "conformers")
    "start",  # where the MD starts: one of the campaign's named structure sources (checked at build time)
    "sampling",  # dict of MDSampling parameters (method, ensemble, temperature, steps, modifiers, ...)
    "geo_opt",  # bool: add a FIRE geometry optimisation (fmax 0.5) of the last MD frame to the pool
    "n_select",  # new training structures per iteration (MaxDist)
    "n_validation",  # new validation structures per iteration (random), default 0
    "selection",  # "max_dist" (default) or "random"
    "screening",  # candidate screening before selection (lotf.selection.screening); default DEFAULT_SCREENING
    "reference",  # which reference labels the new points, e.g. "dft" or "dft-no-d3" (campaign-defined)
    "options",  # campaign-specific settings of a non-sampling kind (e.g. number of boxes)
}
ROW_KINDS = ("sampling",)
SELECTIONS = ("max_dist", "random")
# every pool is screened for atoms closer than 0.6 x their covalent radii sum (collapsed FIRE or MD
# structures, which CP2K rejects or mislabels); campaigns whose molecules stay intact add
# {"intact_molecules": True}
DEFAULT_SCREENING = {"min_distance_factor": 0.6}
# the in-loop relaxation of seed 1: FIRE to fmax 0.5 eV/Å from the MD's last frame, path thinned
GEO_OPT = {"fmax": 0.5, "max_steps": 1000, "max_frames": 50}


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


def check_row(campaign: str, row: dict[str, Any], starts=None, kinds=ROW_KINDS, references=None,
              label: str = "iteration") -> None:
    """Reject a row with an unknown key or value at build time, in one line naming the campaign,
    the iteration and the offending value. ``starts`` are the campaign's structure sources,
    ``kinds`` its row kinds and ``references`` its labellers (``None``: not checked). A campaign
    file passes ``"<file>: iterations"`` and no ``label``: ``<file>: iterations ML7: ...``."""
    where = " ".join(part for part in (campaign, label, str(row.get("name", "?"))) if part)
    unknown = set(row) - ROW_KEYS
    if unknown:
        raise BuildError(f"{where}: unknown setting '{sorted(unknown)[0]}' (known: {', '.join(sorted(ROW_KEYS))})")
    kind = row.get("kind", "sampling")
    if kind not in kinds:
        raise BuildError(f"{where}: unknown kind '{kind}' (known: {', '.join(kinds)})")
    required = ("name", "sampling", "n_select", "start") if kind == "sampling" and starts is not None else (
        ("name", "sampling", "n_select") if kind == "sampling" else ("name",))
    for key in required:
        if key not in row:
            raise BuildError(f"{where}: missing setting '{key}'")
    if starts is not None and "start" in row and row["start"] not in starts:
        raise BuildError(f"{where}: unknown start '{row['start']}' (known: {', '.join(starts)})")
    if row.get("selection", "max_dist") not in SELECTIONS:
        raise BuildError(f"{where}: unknown selection '{row['selection']}' (known: {', '.join(SELECTIONS)})")
    if references is not None and row.get("reference", references[0]) not in references:
        raise BuildError(f"{where}: unknown reference '{row['reference']}' (known: {', '.join(references)})")
    if not isinstance(row.get("geo_opt", False), bool):
        raise BuildError(f"{where}: geo_opt must be true or false (got {row['geo_opt']!r})")
    for key in ("n_select", "n_validation"):
        value = row.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BuildError(f"{where}: {key} must be a non-negative integer (got {value!r})")
    from lotf.selection.screening import Screening, ScreeningError

    try:
        Screening.from_dict(row.get("screening"))
    except (ScreeningError, TypeError) as err:
        raise BuildError(f"{where}: {err}") from None


def replica_name(name: str, k: int) -> str:
    """The k-th of independent runs (seeds) of one protocol: the first keeps the plain name (so a
    single run is named as before), the others are numbered, NPT300K_2, NPT300K_3, ..."""
    return name if k == 0 else f"{name}_{k + 1}"


def as_sources(structure: Any) -> list:
    """A start structure as a list of frame connections (``node.frames``): MD and FIRE nodes
    flatten the list and take its last frame, so ``[start, md.frames]`` is "the MD's last frame,
    or where it started if it stored none"."""
    if isinstance(structure, (list, tuple)):
        return list(structure)
    return [structure.frames]


@dataclass
class CampaignState:
    """What flows from one iteration to the next (names of nodes, not mutated objects)."""

    model: TrainModel
    train: Any  # node with frames: the current training set
    validation: Any  # node with frames: the current validation set
    last_structure: Any  # node with frames whose last frame starts the next sampling
    log: list = field(default_factory=list)  # (iteration, model, samplers, labels) for the report
    picks: dict = field(default_factory=dict)  # iteration -> training selection nodes (requested, screened)

    def record(self, name: str, sampler: Any = None, label: Any = None, picks: list | None = None) -> None:
        """Log an iteration; ``sampler`` and ``label`` may be one node, a list of nodes or None."""
        self.log.append((name, self.model, sampler, label))
        if picks:
            self.picks[name] = list(picks)


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def report(state: CampaignState, test_data: Any, test_data_no_d3: Any = None,
           no_d3_iterations: list | None = None) -> CampaignReport:
    """The campaign's per-iteration table; call inside the campaign's report group.

    Per iteration: training-set size, test errors, MD steps before the stop, and the points
    requested by the selections, screened out, labelled and failed by the reference. Models of
    ``no_d3_iterations`` are tested on ``test_data_no_d3`` (the same structures without D3).
    """
    samplers, sampled, labels, labelled, picks, picked = [], [], [], [], [], []
    for name, _, sampler, label in state.log:
        for node in _as_list(sampler):
            samplers.append(node)
            sampled.append(name)
        for node in _as_list(label):
            labels.append(node)
            labelled.append(name)
        for node in state.picks.get(name, []):
            picks.append(node)
            picked.append(name)
    extra = {}
    if test_data_no_d3 is not None:
        extra = {"test_data_no_d3": test_data_no_d3.frames, "no_d3_iterations": list(no_d3_iterations or [])}
    return CampaignReport(iterations=[entry[0] for entry in state.log], models=[entry[1] for entry in state.log],
                          sampled_iterations=sampled, samplers=samplers, labelled_iterations=labelled, labels=labels,
                          selected_iterations=picked, selections=picks, test_data=test_data.frames, **extra)


def hand_on(sources: list, pool: Any, screening: dict, screening_reference: Any = None) -> Any:
    """What the next iteration starts from: the pool's last frame (``sources`` when it stored
    none); when ``screening`` asks for intact molecules, the last pool frame that keeps them, or
    the start if none does (the FIRE of a poor model can form a bond, and started from, that
    structure would spoil every later pool)."""
    if not (screening.get("intact_molecules") and screening_reference is not None):
        return [*sources, pool.frames]
    last_intact = LastFrameSelection(data=pool.frames, n_configurations=1, screening=screening,
                                     screening_reference=screening_reference.frames, name="NextStart")
    return [*sources, last_intact.frames]


def learning_step(row: dict[str, Any], state: CampaignState, *, start: Any, label, model_config: str,
                  model_overrides: dict, seed: int, screening_reference: Any = None,
                  geo_opt: dict | None = None) -> CampaignState:
    """Nodes of one iteration; call inside ``project.group(campaign, row["name"])``.

    ``start`` is a node with ``frames`` or a list of frame connections (see :func:`as_sources`);
    ``screening_reference`` a node whose first frame has intact molecules (for rows whose
    screening asks for them: the next iteration then starts from the last pool structure that
    passes the screening); ``geo_opt`` replaces the FIRE settings (default :data:`GEO_OPT`).
    """
    sources = as_sources(start)
    md = MDSampling(model=state.model, data=sources, data_id=-1, seed=seed, **row["sampling"])
    pool = [md.frames]
    if row.get("geo_opt", False):
        geo = GeometryOptimisation(model=state.model, data=md.frames, data_id=-1, fallback=sources,
                                   **(geo_opt or GEO_OPT))
        pool.append(geo.frames)
    candidates = MergeFrames(data=pool, name="Pool") if len(pool) > 1 else md
    screen = {"screening": row.get("screening", DEFAULT_SCREENING)}
    last = hand_on(sources, candidates, screen["screening"], screening_reference)
    if screen["screening"].get("intact_molecules") and screening_reference is not None:
        screen["screening_reference"] = screening_reference.frames
    validation = state.validation
    if row.get("n_validation", 0):
        val_pick = RandomSelection(data=candidates.frames, n_configurations=row["n_validation"], seed=seed,
                                   name="ValidationPick", **screen)
        val_label = label(val_pick.frames, name="ValidationLabel")
        validation = MergeFrames(data=[state.validation.frames, val_label.frames], name="Validation")
        pool_frames = val_pick.excluded_frames  # pick training points from what is left (already screened)
        screen = {}
    else:
        pool_frames = candidates.frames
    if row.get("selection", "max_dist") == "random":
        pick = RandomSelection(data=pool_frames, n_configurations=row["n_select"], seed=seed, **screen)
    else:
        pick = MaxDistSelection(data=pool_frames, train_data=state.train.frames, model=state.model,
                                n_configurations=row["n_select"], **screen)
    labelled = label(pick.frames)
    train = MergeFrames(data=[state.train.frames, labelled.frames], name="TrainingSet")
    model = TrainModel(data=train.frames, validation_data=validation.frames, config=model_config,
                       overrides=model_overrides, init_from=state.model)
    new = CampaignState(model=model, train=train, validation=validation, last_structure=last, log=state.log,
                        picks=state.picks)
    if row.get("n_validation", 0):  # the report counts every labelled point, validation included
        new.record(row["name"], sampler=md, label=[val_label, labelled], picks=[val_pick, pick])
    else:
        new.record(row["name"], sampler=md, label=labelled, picks=[pick])
    return new
