"""Modifiers: seed-1 eq. 9, a linear ramp plus a sine, for temperature, density and pressure.

    Q(t) = Q_start + (t / t_end) (Q_end − Q_start) + Q_amp sin(t / t_per)          (seed 1, eq. 9)

with t the simulated time in fs since the start of the run (resets do not restart it). After
``t_end`` the ramp stays at Q_end (the sine continues). Note the argument of the sine is t/t_per,
as printed in eq. 9: one oscillation takes 2π·t_per. Instead of ``t_per`` a modifier may take
``n_oscillations`` (IPSuite's ``num_oscillations``): t_per = t_end / (2π n).

The names follow seed 1 (eq. 9, Table 1): ``T_start/T_end/T_amp`` in K, ``rho_start/rho_end/rho_amp``
in g/cm³, ``p_start/p_end/p_amp`` in bar; ``t_per`` and ``t_end`` in fs (``t_end`` None: the run's
length). A modifier is a pure function of (state, control, t), applied before every step.

* :class:`TemperatureRamp` sets the thermostat target.
* :class:`DensityRamp` rescales the cell (and the positions with it, affinely) so the density is
  ρ(t); use it with NVT. Momenta are left unchanged.
* :class:`PressureRamp` sets the barostat target (NPT only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax.numpy as jnp
from ase import units

from lotf.dynamics.state import MDState, density


class Control(NamedTuple):
    """Targets the integrator reads every step."""

    kT: float  # eV
    pressure: float  # eV/Å³


def eq9(t, start: float, end: float, amp: float, t_per: float, t_end: float):
    """Seed-1 eq. 9 with the ramp held at ``end`` after ``t_end``."""
    frac = jnp.minimum(t / t_end, 1.0)
    return start + frac * (end - start) + amp * jnp.sin(t / t_per)


def t_per_for(n_oscillations: float, t_end: float) -> float:
    """t_per giving ``n_oscillations`` full sine periods within ``t_end`` (2π t_per each)."""
    if n_oscillations <= 0:
        raise ValueError(f"n_oscillations must be > 0, got {n_oscillations}")
    return t_end / (2.0 * math.pi * n_oscillations)


def _check_common(name: str, amp: float, t_per: float | None, t_end: float | None, n_osc: float | None) -> None:
    if t_per is not None and not t_per > 0:
        raise ValueError(f"{name} 't_per' must be > 0 fs, got {t_per}")
    if t_end is not None and not t_end > 0:
        raise ValueError(f"{name} 't_end' must be > 0 fs, got {t_end}")
    if n_osc is not None and not n_osc > 0:
        raise ValueError(f"{name} 'n_oscillations' must be > 0, got {n_osc}")
    if t_per is not None and n_osc is not None:
        raise ValueError(f"{name}: give 't_per' or 'n_oscillations', not both")
    if amp != 0 and t_per is None and n_osc is None:
        raise ValueError(f"{name}: an amplitude needs 't_per' (fs) or 'n_oscillations'")


def _eq9(m, start: float, end: float, amp: float, t, run_end: float):
    t_end = m.t_end or run_end
    t_per = m.t_per if m.t_per is not None else (t_per_for(m.n_oscillations, t_end) if m.n_oscillations else 1.0)
    return eq9(t, start, end, amp, t_per, t_end)


@dataclass(frozen=True)
class TemperatureRamp:
    """Thermostat temperature T(t) by eq. 9 (K). Seed 1 it. 5-7: T 230–500 K."""

    T_start: float
    T_end: float
    T_amp: float = 0.0
    t_per: float | None = None
    t_end: float | None = None
    n_oscillations: float | None = None

    def __post_init__(self):
        _check_common("TemperatureRamp", self.T_amp, self.t_per, self.t_end, self.n_oscillations)
        if min(self.T_start, self.T_end) - abs(self.T_amp) <= 0:
            raise ValueError(f"TemperatureRamp would reach T <= 0 K (T_start {self.T_start}, T_end {self.T_end}, "
                             f"T_amp {self.T_amp})")

    def value(self, t, t_end: float):
        return _eq9(self, self.T_start, self.T_end, self.T_amp, t, t_end)

    def apply(self, state: MDState, control: Control, t, t_end: float) -> tuple[MDState, Control]:
        return state, control._replace(kT=units.kB * self.value(t, t_end))


@dataclass(frozen=True)
class DensityRamp:
    """Density ρ(t) by eq. 9 (g/cm³), imposed by isotropic affine rescaling of cell and positions."""

    rho_start: float
    rho_end: float
    rho_amp: float = 0.0
    t_per: float | None = None
    t_end: float | None = None
    n_oscillations: float | None = None

    def __post_init__(self):
        _check_common("DensityRamp", self.rho_amp, self.t_per, self.t_end, self.n_oscillations)
        if min(self.rho_start, self.rho_end) - abs(self.rho_amp) <= 0:
            raise ValueError("DensityRamp would reach a density <= 0 g/cm³")

    def value(self, t, t_end: float):
        return _eq9(self, self.rho_start, self.rho_end, self.rho_amp, t, t_end)

    def apply(self, state: MDState, control: Control, t, t_end: float) -> tuple[MDState, Control]:
        factor = (density(state.masses, state.cell) / self.value(t, t_end)) ** (1.0 / 3.0)
        return state._replace(positions=state.positions * factor, cell=state.cell * factor), control


@dataclass(frozen=True)
class PressureRamp:
    """Barostat pressure p(t) by eq. 9 (bar); seed 1 NPT used 1.0 atm = 1.01325 bar."""

    p_start: float
    p_end: float
    p_amp: float = 0.0
    t_per: float | None = None
    t_end: float | None = None
    n_oscillations: float | None = None

    def __post_init__(self):
        _check_common("PressureRamp", self.p_amp, self.t_per, self.t_end, self.n_oscillations)

    def value(self, t, t_end: float):
        return _eq9(self, self.p_start, self.p_end, self.p_amp, t, t_end)

    def apply(self, state: MDState, control: Control, t, t_end: float) -> tuple[MDState, Control]:
        return state, control._replace(pressure=units.bar * self.value(t, t_end))


MODIFIERS = {"temperature": TemperatureRamp, "density": DensityRamp, "pressure": PressureRamp}


def from_dict(spec: dict):
    """A modifier from ``{"kind": "temperature", "T_start": 230, "T_end": 500, ...}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in MODIFIERS:
        raise ValueError(f"modifier 'kind' must be one of {', '.join(MODIFIERS)}, got {kind!r}")
    try:
        return MODIFIERS[kind](**spec)
    except TypeError as err:
        raise ValueError(f"{kind} modifier: {err}") from None
