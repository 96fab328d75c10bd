"""Seed-1 eq. 9 modifiers: exact values, the ramp after t_end, conversions and errors."""

import math

import numpy as np
import pytest
from ase import units

from lotf.dynamics.modifiers import Control, DensityRamp, PressureRamp, TemperatureRamp, eq9, from_dict, t_per_for


@pytest.mark.parametrize("t", [0.0, 1.0, 123.4, 2500.0, 9999.0, 10000.0])
def test_temperature_ramp_is_eq9(t):
    ramp = TemperatureRamp(T_start=230.0, T_end=500.0, T_amp=150.0, t_per=159.15494309189535, t_end=10000.0)
    expected = 230.0 + t / 10000.0 * (500.0 - 230.0) + 150.0 * math.sin(t / 159.15494309189535)
    assert float(ramp.value(t, 99.0)) == pytest.approx(expected, rel=1e-14, abs=1e-12)
    _, control = ramp.apply(None, Control(0.0, 0.0), t, 99.0)
    assert float(control.kT) == pytest.approx(units.kB * expected, rel=1e-14)


def test_ramp_holds_after_t_end_and_uses_the_run_length_by_default():
    ramp = PressureRamp(p_start=1.0, p_end=11.0)
    assert float(ramp.value(50.0, 100.0)) == pytest.approx(6.0)
    assert float(ramp.value(250.0, 100.0)) == pytest.approx(11.0)
    assert float(eq9(150.0, 0.0, 1.0, 0.0, 1.0, 100.0)) == 1.0


def test_n_oscillations_sets_t_per():
    assert t_per_for(10, 2 * math.pi * 1000) == pytest.approx(100.0)
    ramp = DensityRamp(rho_start=1.0, rho_end=1.0, rho_amp=0.1, n_oscillations=2, t_end=1000.0)
    # a quarter of the first of two periods in 1000 fs: the sine peaks at t = 125 fs
    assert float(ramp.value(125.0, 5000.0)) == pytest.approx(1.1)
    ts = np.arange(0.25, 1000.0, 0.5)  # avoids the exact zeros
    values = np.array([float(ramp.value(t, 5000.0)) for t in ts])
    crossings = np.sum(np.diff(np.sign(values - 1.0)) != 0)
    assert crossings == 3  # two full periods: zero crossings at 250, 500, 750 fs


def test_density_ramp_rescales_cell_and_positions():
    import jax.numpy as jnp

    from lotf.dynamics.state import AMU_PER_A3_TO_G_PER_CM3, MDState

    masses = jnp.full(4, 10.0)
    cell = jnp.eye(3) * 5.0
    state = MDState(jnp.ones((4, 3)), jnp.zeros((4, 3)), masses, cell, None, (), (), None, None)
    ramp = DensityRamp(rho_start=0.5, rho_end=0.5)
    new, _ = ramp.apply(state, Control(0.0, 0.0), 0.0, 1.0)
    rho = 40.0 / float(jnp.linalg.det(new.cell)) * AMU_PER_A3_TO_G_PER_CM3
    assert rho == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_allclose(np.asarray(new.positions / new.cell[0, 0]), np.asarray(state.positions / 5.0))


def test_bad_modifiers_fail_naming_the_field():
    with pytest.raises(ValueError, match="T <= 0"):
        TemperatureRamp(T_start=100.0, T_end=300.0, T_amp=150.0, t_per=10.0)
    with pytest.raises(ValueError, match="needs 't_per'"):
        TemperatureRamp(T_start=300.0, T_end=300.0, T_amp=10.0)
    with pytest.raises(ValueError, match="not both"):
        PressureRamp(p_start=1, p_end=2, t_per=1.0, n_oscillations=2)
    with pytest.raises(ValueError, match="'kind'"):
        from_dict({"kind": "humidity"})
    with pytest.raises(ValueError, match="temperature modifier"):
        from_dict({"kind": "temperature", "T_begin": 3})
    ramp = from_dict({"kind": "temperature", "T_start": 230, "T_end": 500, "T_amp": 150, "n_oscillations": 10})
    assert isinstance(ramp, TemperatureRamp) and ramp.n_oscillations == 10
