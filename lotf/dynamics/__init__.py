"""Sampling dynamics in JAX: integrators, thermostats and barostats, modifiers, checks, biases
(UDD, ERBS), FIRE, and the block loop that drives them (see :mod:`lotf.dynamics.md`).

Modules: ``state`` (MD state, units), ``potential`` (base potential + bias as one force field;
JAX terms or any ASE calculator), ``integrators``, ``modifiers`` (seed 1 eq. 9), ``checks``,
``biases``, ``md`` (``MDRun``/``run_md``), ``fire`` (``FIRE``/``optimise``).
"""
