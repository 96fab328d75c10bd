"""Campaign files: one YAML file describes a campaign (``lotf build --config FILE``).

A campaign file names its ``template`` (the builder in the project's ``stages/`` folder that turns
it into nodes) and holds sections (``system``, ``seed``, ``reference``, ``model``,
``iterations``, ``production``, ``experimental``, ...) with the values of the paper profile;
``profiles`` changes them per profile. :func:`load_campaign` reads a file, checks it against the
JSON Schema shipped beside this module (``campaign.schema.json``), applies a profile and returns
a :class:`Campaign`. Every problem is one line naming the file, the section or iteration row and
the key, e.g. ``campaigns/x.yaml: iterations ML7: unknown key 'n_selct' (known: ...)``.

Profiles: a profile's sections are merged into the file's sections key by key (mappings
recursively, anything else replaced). A profile's ``iterations`` is either a list (the table of
that profile) or a mapping that changes the file's table: ``only`` (the rows to keep, by name),
``scale`` (every ``n_select`` / ``n_validation`` times this, at least 1), ``sampling`` (keys set
in every MD of the table), ``screening`` (keys set in every row's screening) and ``rows``
(name -> keys merged into that row).

The YAML loader turns anchors into shared objects and nothing here copies a value the profile
leaves alone: ZnTrack writes shared objects as YAML aliases in params.yaml, so the graph of a
campaign file is the same as the one its builder made before campaign files existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("campaign.schema.json")


class CampaignError(ValueError):
    """A campaign file problem: the message is one line naming the file and the key."""


def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@dataclass
class Campaign:
    """A campaign file at one profile: its sections merged with the profile's."""

    path: Path  # as given (messages name it like this)
    profile: str
    name: str
    template: str
    group: str
    sections: dict = field(repr=False)
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # files read at build time

    def __getitem__(self, section: str) -> Any:
        if section not in self.sections:
            raise CampaignError(f"{self.path}: missing section '{section}' (template {self.template})")
        return self.sections[section]

    def get(self, section: str, default: Any = None) -> Any:
        return self.sections.get(section, default)

    def where(self, *parts: str) -> str:
        """``file: part part`` for messages."""
        return f"{self.path}: {' '.join(parts)}" if parts else str(self.path)

    def require(self, section: str, *keys: str) -> dict:
        """The section, failing in one line when it lacks one of ``keys``."""
        values = self[section]
        for key in keys:
            if key not in values:
                raise CampaignError(f"{self.where(section)}: missing key '{key}' (template {self.template})")
        return values

    @property
    def iterations(self) -> list[dict]:
        return self["iterations"]


def read(path: str | Path) -> dict:
    """The file's mapping, checked against the schema (before any profile is applied)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"{path}: campaign file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        from lotf.inputs import yaml_problem

        raise CampaignError(f"{path}: {yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise CampaignError(f"{path}: a campaign file is a mapping of sections, got {type(data).__name__}")
    validate(data, schema(), str(path))
    return data


def profiles(path: str | Path) -> list[str]:
    return list(read(path).get("profiles") or {"paper": {}})


def load_campaign(path: str | Path, profile: str = "paper") -> Campaign:
    """Read, check and resolve ``path`` at ``profile``."""
    data = read(path)
    known = data.get("profiles") or {"paper": {}}
    if profile not in known:
        raise CampaignError(f"{path}: unknown profile '{profile}' (known: {', '.join(known)})")
    sections = {key: value for key, value in data.items()
                if key not in ("campaign", "template", "group", "description", "definitions", "profiles")}
    for key, change in (known[profile] or {}).items():
        if key == "iterations" and isinstance(change, dict):
            sections[key] = change_rows(sections.get(key, []), change, f"{path}: profiles {profile} iterations")
        elif isinstance(change, dict) and isinstance(sections.get(key), dict):
            sections[key] = merged(sections[key], change)
        else:
            sections[key] = change
    validate(sections, {**schema(), "required": []}, f"{path} ({profile})")
    name = data["campaign"]
    return Campaign(path=Path(path), profile=profile, name=name, template=data["template"],
                    group=data.get("group", name.replace("_", "-")), sections=sections)


def merged(base: dict, change: dict) -> dict:
    """``base`` with ``change`` merged in (mappings recursively); values not changed are the same objects."""
    out = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def change_rows(rows: list[dict], change: dict, where: str) -> list[dict]:
    """A profile's changes to the iteration table (see the module docstring)."""
    names = [row.get("name") for row in rows]
    for name in [*change.get("only", []), *change.get("rows", {})]:
        if name not in names:
            raise CampaignError(f"{where}: unknown row '{name}' (known: {', '.join(map(str, names))})")
    keep = change.get("only", names)
    out = []
    for row in rows:
        if row.get("name") not in keep:
            continue
        row = _changed(row, change.get("scale"), change.get("sampling"))
        if change.get("screening") and row.get("screening"):
            row["screening"] = {**row["screening"], **change["screening"]}
        if row["name"] in change.get("rows", {}):
            row = merged(row, change["rows"][row["name"]])
        out.append(row)
    return out


def _changed(row: dict, scale: float | None, sampling: dict | None) -> dict:
    """A row (or a sampler of a row's options) with its numbers of points scaled and its MD changed."""
    row = dict(row)
    if scale is not None:
        for key in ("n_select", "n_validation"):
            if key in row:
                row[key] = max(1, round(row[key] * scale))
    if sampling and "sampling" in row:
        row["sampling"] = {**row["sampling"], **sampling}
    options = row.get("options")
    if isinstance(options, dict):
        options = dict(options)
        if scale is not None and "n_select" in options:
            options["n_select"] = max(1, round(options["n_select"] * scale))
        if "samplers" in options:
            options["samplers"] = [_changed(s, scale, sampling) for s in options["samplers"]]
        row["options"] = options
    return row


# files a campaign file may name: (section, key); all relative to the project root
FILE_KEYS = (("reference", "cp2k"), ("reference", "cp2k_no_d3"), ("model", "initial"), ("model", "final"),
             ("exploration", "model"), ("experimental", "density"), ("experimental", "diffusion"),
             ("truth", "xtb_settings"), ("system", "structure"), ("seed", "path"))


def files_named(c: Campaign) -> list[str]:
    """The input files ``c`` names (settings, presets, topologies, experimental tables)."""
    files = [c.sections[section][key] for section, key in FILE_KEYS
             if isinstance(c.sections.get(section), dict) and key in c.sections[section]]
    return files + list((c.sections.get("seed") or {}).get("topologies", []))


@dataclass
class Structure:
    """A campaign's ``system.structure`` file as read at build time: its last frame (the box a
    seed starts from) and its molecules (bond graph) by Hill formula, in order of appearance."""

    path: str
    atoms: Any = field(repr=False)
    species: dict[str, int]


def read_box(path: str, where: str, what: str = "structure", root: str | Path = ".") -> Any:
    """The last frame of ``root/path`` (read like :class:`lotf.nodes.frames.LoadFrames` reads it),
    failing in one line naming ``where`` and the file when it is unreadable, empty or has no cell."""
    from lotf.reference.labelling import read_frames

    if not (Path(root) / path).is_file():
        raise CampaignError(f"{where}: {what} file not found: {path}")
    try:
        frames = read_frames(Path(root) / path)
    except (ValueError, FileNotFoundError) as err:
        message = str(err).strip().splitlines()[0].removeprefix(f"{Path(root) / path}: ")
        raise CampaignError(f"{where}: {what} file {path}: {message}") from None
    if not frames:
        raise CampaignError(f"{where}: {what} file {path}: no structures in it")
    atoms = frames[-1]
    if atoms.cell.rank < 3 or not atoms.cell.volume > 0:
        raise CampaignError(f"{where}: {what} file {path}: the cell is missing (a periodic box needs its cell "
                            "vectors: CRYST1 in PDB, Lattice= in extended XYZ)")
    atoms.pbc = True
    return atoms


def structure(c: Campaign, root: str | Path = ".") -> Structure | None:
    """``system.structure`` of ``c`` read from the project ``root`` (once; later calls reuse it),
    or None when the system is given as SMILES."""
    path = (c.sections.get("system") or {}).get("structure")
    if path is None:
        return None
    cached = c.cache.get("structure")
    if cached is not None and cached.path == path:
        return cached
    from lotf.reference.structures import species

    atoms = read_box(path, c.where("system"), root=root)
    found = Structure(path=path, atoms=atoms, species=species(atoms))
    c.cache["structure"] = found
    return found


def elements(c: Campaign) -> list[str]:
    """The chemical elements of the system's molecules (from their SMILES, hydrogens included, or
    from the structure file)."""
    from rdkit import Chem

    system, found = c.sections.get("system") or {}, set()
    box = structure(c)
    if box is not None:
        found |= set(box.atoms.get_chemical_symbols())
    for key in ("cation", "anion", "molecule"):
        if key in system:
            molecule = Chem.MolFromSmiles(system[key]["smiles"])
            if molecule is None:
                raise CampaignError(f"{c.where('system', key)}: RDKit cannot read the SMILES '{system[key]['smiles']}'")
            found |= {atom.GetSymbol() for atom in Chem.AddHs(molecule).GetAtoms()}
    return sorted(found)


def check_campaign(c: Campaign, root: str | Path = ".") -> None:
    """Build-time checks beyond the schema: every named file exists in the project ``root``, and a
    CP2K reference knows every element of the system (``lotf.reference.cp2k.check_elements``,
    where CP2K's data files are installed)."""
    for section, key in FILE_KEYS:
        path = (c.sections.get(section) or {}).get(key) if isinstance(c.sections.get(section), dict) else None
        if path is not None and not (Path(root) / path).is_file():
            raise CampaignError(f"{c.where(section)}: {key} file not found: {path}")
    for path in (c.sections.get("seed") or {}).get("topologies", []):
        if not (Path(root) / path).is_file():
            raise CampaignError(f"{c.where('seed')}: topologies file not found: {path}")
    structure(c, root)  # readable, with a cell
    seed = c.sections.get("seed") or {}
    if seed.get("kind") == "file" and "path" in seed:
        read_box(seed["path"], c.where("seed"), "path", root)
    from lotf.reference import cp2k

    reference = c.sections.get("reference") or {}
    if not any(key in reference for key in ("cp2k", "cp2k_no_d3")):
        return
    if not cp2k.cp2k_data_dirs():  # a graph may be built where CP2K is not installed (labels run elsewhere)
        return
    symbols = elements(c)
    for key in ("cp2k", "cp2k_no_d3"):
        if key in reference and symbols:
            try:
                cp2k.check_elements(str(Path(root) / reference[key]), symbols)
            except (ValueError, KeyError) as err:
                raise CampaignError(f"{c.where('reference', key)}: {str(err).strip().splitlines()[0]}") from None


# --------------------------------------------------------------------------- schema check
# The subset of JSON Schema the shipped schema uses: type, properties, additionalProperties,
# required, enum, items, minimum, exclusiveMinimum, pattern, $ref (to #/$defs/...) and
# dependentSchemas whose properties are false (keys that exclude each other). Written here
# rather than taken from the jsonschema package, which is not a dependency of lotf, and so that a
# problem reads as one line naming the row.

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema_: dict, where: str) -> None:
    """Check ``value`` against ``schema_``; the first problem is raised as a :class:`CampaignError`
    naming ``where`` and the path to the key (list items by their ``name`` when they have one)."""
    _check(value, schema_, schema_, where, [])


def _resolve(node: dict, root: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"campaign schema: only local references are supported, got {ref}")
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fail(where: str, path: list[str], message: str) -> None:
    location = f"{where}: {' '.join(path)}" if path else where
    raise CampaignError(f"{location}: {message}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(value: Any, node: dict, root: dict, where: str, path: list[str]) -> None:
    node = _resolve(node, root)
    types = node.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in allowed):
            key = f"'{path[-1]}' " if path else ""
            _fail(where, path[:-1], f"{key}must be {' or '.join(allowed)}, got {_show(value)}")
    if "enum" in node and value not in node["enum"]:
        _fail(where, path[:-1], f"unknown {path[-1] if path else 'value'} {_show(value)} "
                                f"(known: {', '.join(map(str, node['enum']))})")
    if _TYPES["number"](value):
        if "minimum" in node and value < node["minimum"]:
            _fail(where, path[:-1], f"'{path[-1]}' must be at least {node['minimum']}, got {value}")
        if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
            _fail(where, path[:-1], f"'{path[-1]}' must be above {node['exclusiveMinimum']}, got {value}")
    if isinstance(value, str) and "pattern" in node:
        import re

        if not re.search(node["pattern"], value):
            _fail(where, path[:-1], f"'{path[-1]}' {_show(value)} does not match {node['pattern']}")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():  # unknown keys first: a typo explains a missing key
            if key in properties:
                _check(item, properties[key], root, where, [*path, str(key)])
            elif extra is False:
                _fail(where, path, f"unknown key '{key}' (known: {', '.join(properties)})")
            elif isinstance(extra, dict):
                _check(item, extra, root, where, [*path, str(key)])
        for key in node.get("required", []):
            if key not in value:
                _fail(where, path, f"missing key '{key}'")
        for trigger, rule in node.get("dependentSchemas", {}).items():  # only keys excluded by a trigger key
            for key, allowed in (rule.get("properties", {}) if trigger in value else {}).items():
                if allowed is False and key in value:
                    _fail(where, path, f"'{key}' and '{trigger}' exclude each other ({rule.get('description', '')})")
    if isinstance(value, list) and "items" in node:
        for k, item in enumerate(value):
            label = str(item["name"]) if isinstance(item, dict) and isinstance(item.get("name"), str) else str(k)
            _check(item, node["items"], root, where, [*path, label])
