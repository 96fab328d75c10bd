"""Sampling biases: uncertainty-driven dynamics (UDD) and ERBS (OPES-explore on descriptor PCs).

Both are energies added to the base potential, so forces and stress are derivatives of a sum
(DESIGN.md, "the one idea"). What differs is what they are functions of.

UDD (seed 2, eq. 11) is a function of the ensemble members' energies E_m:

    σ² = Σ_m (E_m − Ē)² / (M − ddof),     E_UDD = A [exp(−σ² / (M N B²)) − 1].

Its gradient needs no second-order autodiff: with c_m = ∂E_UDD/∂E_m
= −(A / (M N B²)) exp(−σ²/(M N B²)) · 2 (E_m − Ē)/(M − ddof),

    F_UDD = −Σ_m c_m ∇E_m = Σ_m c_m F_m
          = −(2A / (M N B² (M − ddof))) exp(−σ²/(M N B²)) Σ_m (E_m − Ē) F_m,

which for ddof = 1 is the closed form in the reference notes (§4.4). Because it is linear in the
member forces, the biased force is Σ_m w_m F_m with w_m = 1/M + c_m: inside the JAX loop that is
*one* reverse pass of the member energies with cotangent w (no extra cost over unbiased MD), and
on sampling steps (or with an ASE calculator) the same formula is applied to the member forces.
The virial (stress) follows the same weights.

ERBS (seed 2, §2.3, eq. 12-18). The collective variables are s = (g(R) − μ) V_k, with g the
element-blind Gaussian-moment descriptor averaged over atoms and V_k the first k principal
axes of the reference descriptors. The bias is OPES-explore

    P(s) = Σ_k h_k K_k(s) / Σ_k h_k,   K_k = N(s; c_k, diag(v_k))     (bandwidth σ: v = σ² at deposition)
    Z    = (1/N_kernels) Σ_l P(c_l)
    V(s) = (γ − 1)/β · log(P(s)/Z + ε) + ΔE,    γ = βΔE,  ε = exp(−γ/(γ − 1)),

shifted by ΔE so that V = 0 where nothing was deposited and V ≥ 0 everywhere (a constant, no
effect on forces). Forces and the stress come from autodiff of V(s(R, strain)).

Departures from the reference implementation (notes §6, §8 item 11), on purpose:
* one kernel definition, a normalised Gaussian with the bandwidth as a *standard deviation*,
  used for both P and Z (the reference multiplies P by the CV dimension and uses the
  bandwidth as a std in the heights and as a variance in the exponents);
* ``r_min`` of the descriptor is honoured; configurations given for the PCA only
  (``aux``) are never deposited as kernels;
* a fixed PCA basis does accumulate kernels (the reference's update is a no-op);
* kernels live in fixed-capacity arrays and the deposition (PCA refit, recompression, Z) is
  itself jitted, so nothing recompiles when a kernel is added;
* the bias has a stress term, so ERBS runs under NPT;
* the descriptor is float64 and averages over the real atoms of the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from lotf.potential import descriptor as gm

# ---------------------------------------------------------------------------------------------
# UDD
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UDD:
    """Uncertainty-driven dynamics bias (Kulichenko et al.; seed 2 eq. 11).

    Attributes:
        height: A in eV (per atom when ``per_atom``; seed 2 scans 0.1–10 eV/atom).
        width: B in eV (seed 2 scans 0.1–2 eV).
        per_atom: A is per atom, the bias height is A·N.
        ddof: the variance is Σ(E_m − Ē)²/(M − ddof); 0 is seed 2 eq. 6 (and our models' default).
    """

    height: float = 1.0
    width: float = 0.5
    per_atom: bool = False
    ddof: int = 0

    def __post_init__(self):
        if not self.height >= 0:
            raise ValueError(f"UDD 'height' must be >= 0, got {self.height}")
        if not self.width > 0:
            raise ValueError(f"UDD 'width' must be > 0, got {self.width}")
        if self.ddof not in (0, 1):
            raise ValueError(f"UDD 'ddof' must be 0 or 1, got {self.ddof}")

    def total_height(self, n_atoms: int) -> float:
        return self.height * n_atoms if self.per_atom else self.height

    def energy_and_weights(self, e_members: jax.Array, n_atoms: int) -> tuple[jax.Array, jax.Array]:
        """(E_UDD, c) with c_m = ∂E_UDD/∂E_m, for member energies (M,)."""
        m = e_members.shape[0]
        if m < 2:
            raise ValueError("UDD needs an ensemble with at least 2 members")
        a = self.total_height(n_atoms)
        dev = e_members - jnp.mean(e_members)
        var = jnp.sum(dev**2) / (m - self.ddof)
        scale = m * n_atoms * self.width**2
        expo = jnp.exp(-var / scale)
        energy = a * (expo - 1.0)
        c = -(a / scale) * expo * 2.0 * dev / (m - self.ddof)
        return energy, c

    def energy(self, e_members: jax.Array, n_atoms: int) -> jax.Array:
        return self.energy_and_weights(e_members, n_atoms)[0]

    def forces(self, e_members: jax.Array, f_members: jax.Array, n_atoms: int) -> jax.Array:
        """Closed-form F_UDD from member energies (M,) and member forces (M, N, 3)."""
        _, c = self.energy_and_weights(e_members, n_atoms)
        return jnp.einsum("m,mna->na", c, f_members)


# ---------------------------------------------------------------------------------------------
# ERBS: kernels, density, normalisation, compression (all pure JAX on fixed-capacity arrays)
# ---------------------------------------------------------------------------------------------


class Kernels(NamedTuple):
    """Up to C diagonal Gaussian kernels in k CV dimensions; slots ≥ ``count`` are unused."""

    centers: jax.Array  # (C, k)
    variances: jax.Array  # (C, k)
    heights: jax.Array  # (C,) number of deposits merged into the kernel (0 = unused)
    count: jax.Array  # () int32


def empty_kernels(capacity: int, k: int) -> Kernels:
    return Kernels(jnp.zeros((capacity, k)), jnp.ones((capacity, k)), jnp.zeros(capacity),
                   jnp.zeros((), jnp.int32))


def _log_kernel_terms(s: jax.Array, kernels: Kernels) -> tuple[jax.Array, jax.Array]:
    """log(h_k K_k(s)) for every slot (−inf for unused) and the valid mask."""
    valid = jnp.arange(kernels.heights.shape[0]) < kernels.count
    var = jnp.where(valid[:, None], kernels.variances, 1.0)
    h = jnp.where(valid, kernels.heights, 1.0)
    d2 = jnp.sum((s[None, :] - kernels.centers) ** 2 / var, axis=1)
    t = jnp.log(h) - 0.5 * d2 - 0.5 * jnp.sum(jnp.log(2.0 * jnp.pi * var), axis=1)
    return jnp.where(valid, t, -jnp.inf), valid


def _masked_logsumexp(t: jax.Array) -> jax.Array:
    """log Σ exp(t) with −inf entries allowed, all-(−inf) giving −inf, and NaN-free gradients."""
    m = jnp.max(t)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    total = jnp.sum(jnp.exp(t - m))
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, m + jnp.log(safe), -jnp.inf)


def log_density(s: jax.Array, kernels: Kernels) -> jax.Array:
    """log P(s), P = Σ_k h_k K_k(s) / Σ_k h_k (−inf without kernels)."""
    t, valid = _log_kernel_terms(s, kernels)
    total_h = jnp.sum(jnp.where(valid, kernels.heights, 0.0))
    return _masked_logsumexp(t) - jnp.log(jnp.where(total_h > 0, total_h, 1.0))


def log_normalisation(kernels: Kernels) -> jax.Array:
    """log Z, Z = (1/N_kernels) Σ_l P(c_l) over the kernel centres (0 without kernels)."""
    logp = jax.vmap(lambda c: log_density(c, kernels))(kernels.centers)
    valid = jnp.arange(kernels.heights.shape[0]) < kernels.count
    n = jnp.maximum(kernels.count, 1).astype(jnp.float64)
    out = _masked_logsumexp(jnp.where(valid, logp, -jnp.inf)) - jnp.log(n)
    return jnp.where(kernels.count > 0, out, 0.0)


def add_kernel(kernels: Kernels, center: jax.Array, variance: jax.Array, height: jax.Array,
               threshold: float) -> Kernels:
    """Merge a kernel into the nearest one if its Mahalanobis distance is below ``threshold``.

    Distance to kernel j: sqrt(Σ_d (c − c_j)²/v_j). Merging conserves weight, mean and second
    moment: h = h1 + h2, c = (h1 c1 + h2 c2)/h, v = [h1 (v1 + c1²) + h2 (v2 + c2²)]/h − c².
    Otherwise the kernel takes the next free slot (capacity is sized so there always is one).
    """
    capacity = kernels.heights.shape[0]
    valid = jnp.arange(capacity) < kernels.count
    d2 = jnp.sum((center[None, :] - kernels.centers) ** 2 / jnp.where(valid[:, None], kernels.variances, 1.0), axis=1)
    d2 = jnp.where(valid, d2, jnp.inf)
    j = jnp.argmin(d2)
    merge = d2[j] < threshold**2

    h1, c1, v1 = kernels.heights[j], kernels.centers[j], kernels.variances[j]
    h = h1 + height
    c = (h1 * c1 + height * center) / h
    v = (h1 * (v1 + c1**2) + height * (variance + center**2)) / h - c**2
    merged = Kernels(kernels.centers.at[j].set(c), kernels.variances.at[j].set(v),
                     kernels.heights.at[j].set(h), kernels.count)
    slot = jnp.minimum(kernels.count, capacity - 1)
    appended = Kernels(kernels.centers.at[slot].set(center), kernels.variances.at[slot].set(variance),
                       kernels.heights.at[slot].set(height), jnp.minimum(kernels.count + 1, capacity))
    return jax.tree_util.tree_map(lambda a, b: jnp.where(merge, a, b), merged, appended)


def opes_bias(log_p: jax.Array, log_z: jax.Array, barrier: jax.Array, kT: float) -> jax.Array:
    """OPES-explore bias from log P(s) and log Z, shifted to be zero where P = 0."""
    gamma = barrier / kT
    prefactor = (gamma - 1.0) * kT
    log_eps = -gamma / (gamma - 1.0)
    return prefactor * jnp.logaddexp(log_p - log_z, log_eps) + barrier


# ---------------------------------------------------------------------------------------------
# ERBS: descriptor, PCA and the bias as an energy term
# ---------------------------------------------------------------------------------------------


MAX_DEPOSITIONS = 5000


class ERBSState(NamedTuple):
    refs: jax.Array  # (C, F) deposited averaged descriptors
    n_refs: jax.Array  # () int32
    aux: jax.Array  # (A, F) descriptors used for the PCA only (never deposited)
    mean: jax.Array  # (F,)
    components: jax.Array  # (F, k)
    kernels: Kernels
    log_z: jax.Array  # ()


@dataclass(frozen=True)
class ERBS:
    """Enhanced Representation-Based Sampling bias (seed 2 §2.3).

    Defaults are the seed-2 water setup (ΔE = 0.5 eV/atom, σ = 1.0, k = 3, a kernel every
    5 ps at 0.5 fs) and the reference's descriptor basis (n_basis 4, r_min 1.1 Å).

    Attributes:
        temperature: T in K of β = 1/(k_B T) (the thermostat's temperature).
        barrier: ΔE in eV, per atom when ``per_atom`` (then ΔE_total = barrier · N).
        bandwidth: kernel standard deviation σ in CV units (Σ = σ² I at deposition).
        n_components: k, the number of principal components used as CVs.
        interval: deposition interval in MD steps (the first kernel is deposited at step 0).
        basis: "variable" (refit the PCA on all references at every deposition and recompress
            all kernels; seed 2's default) or "fixed" (PCA from the auxiliary configurations
            only, kernels accumulate incrementally).
        merge_threshold: Mahalanobis distance below which a new kernel is merged (0.4).
        few_refs: projection of a variable basis while there are fewer PCA rows (references plus
            auxiliary configurations) than ``n_components``, where PCA cannot give k axes.
            "svd" (default): the SVD of the zero-padded rows, whose axes beyond the rank are
            arbitrary orthonormal vectors (with one reference: the first k descriptor features).
            "random": the erbs code's ``global_flexible_pca``, a fresh F×k matrix of N(0, 1)
            entries at every such deposition (not orthonormal, each CV ~√F times a unit
            projection), centred on the mean of the rows; deterministic here (seeded by the
            number of references). With seed 2's k = 4 (10) and a kernel every 5 ps, this holds
            for the first 15 (45) ps of an 80 ps run.
        n_basis, r_min, r_max, contractions: the element-blind Gaussian-moment descriptor.
        radial_basis: "gaussian" (default; the erbs code since 2025-01-22: linear Gaussians from
            r_min) or "bessel" (apax's BesselBasis with b_n = 1, no r_min: the erbs code's global
            descriptor from 2024-11-17 to 2025-01-22). For alanine dipeptide the Bessel
            descriptor's principal components are ~14x smaller (PC1 std 0.30 against 4.2 at 1200 K).
            ``r_max`` None (default) takes the cutoff of the first energy term (the MLP), so the
            bias shares the model's neighbour list (6 Å, the reference's value, for an ASE calculator). A
            separate list costs a second set of pairs: 1.42x instead of 1.19x the unbiased step
            on the benchmark box.
        dtype: precision of the descriptor's basis, moments and contractions ("float32", like the
            GMNN default; pair geometry, averaging, PCA and kernels are always float64).
            "float64" costs ~4x more on CPU; the finite-difference tests use it.
    """

    temperature: float = 300.0
    barrier: float = 0.5
    per_atom: bool = True
    bandwidth: float = 1.0
    n_components: int = 3
    interval: int = 10_000
    basis: str = "variable"
    merge_threshold: float = 0.4
    few_refs: str = "svd"
    radial_basis: str = "gaussian"
    n_basis: int = 4
    r_min: float = 1.1
    r_max: float | None = None
    contractions: tuple[int, ...] = tuple(range(gm.N_CONTRACTIONS))
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "contractions", tuple(int(c) for c in self.contractions))
        checks = [
            ("temperature", self.temperature > 0, "must be > 0 K"),
            ("barrier", self.barrier > 0, "must be > 0 eV"),
            ("bandwidth", self.bandwidth > 0, "must be > 0"),
            ("n_components", self.n_components >= 1, "must be >= 1"),
            ("interval", self.interval >= 1, "must be >= 1 step"),
            ("basis", self.basis in ("variable", "fixed"), "must be 'variable' or 'fixed'"),
            ("merge_threshold", self.merge_threshold >= 0, "must be >= 0"),
            ("few_refs", self.few_refs in ("svd", "random"), "must be 'svd' or 'random'"),
            ("radial_basis", self.radial_basis in ("gaussian", "bessel"), "must be 'gaussian' or 'bessel'"),
            ("n_basis", self.n_basis >= 1, "must be >= 1"),
            ("r_max", self.r_max is None or self.r_max > self.r_min >= 0, "must be larger than r_min >= 0"),
            ("dtype", self.dtype in ("float32", "float64"), "must be 'float32' or 'float64'"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ValueError(f"ERBS '{key}' {message} (got {getattr(self, key)!r})")
        if self.n_components > self.n_features:
            raise ValueError(f"ERBS 'n_components' ({self.n_components}) exceeds the descriptor size {self.n_features}")

    @property
    def n_features(self) -> int:
        return gm.n_features(self.n_basis, self.contractions)

    @property
    def kT(self) -> float:
        return units.kB * self.temperature

    def total_barrier(self, n_atoms: int) -> float:
        barrier = self.barrier * n_atoms if self.per_atom else self.barrier
        if barrier <= self.kT:
            raise ValueError(f"ERBS barrier ΔE = {barrier:.4g} eV must exceed k_B T = {self.kT:.4g} eV (γ = βΔE > 1)")
        return barrier

    def descriptor(self, graph) -> jax.Array:
        """System-averaged descriptor of the first structure of a graph, (F,) float64.

        float64: :func:`lotf.potential.descriptor.averaged_descriptor`. float32: the same steps
        with the pair vectors formed in float64 (unwrapped positions) and cast to float32 right
        away; distances, basis, moments and contractions in float32, the average in float64.
        Casting the vectors (not unit vectors and distances computed in float64) matters: the
        mixed-precision gradient was 3x slower on CPU (XLA), see the benchmark notes.
        """
        dtype = jnp.float32 if self.dtype == "float32" else None
        return gm.averaged_descriptor(graph, n_basis=self.n_basis, r_min=self.r_min, r_max=self.r_max,
                                      contractions=self.contractions, basis=self.radial_basis, dtype=dtype)[0]

    def init_state(self, capacity: int, aux: np.ndarray | None = None) -> ERBSState:
        """Empty bias with room for ``capacity`` depositions; ``aux`` (A, F) only feeds the PCA."""
        f, k = self.n_features, self.n_components
        aux = np.zeros((0, f)) if aux is None else np.asarray(aux, dtype=np.float64).reshape(-1, f)
        capacity = max(int(capacity), 1)
        if capacity > MAX_DEPOSITIONS:
            raise ValueError(f"ERBS: {capacity} depositions (steps / interval) exceed {MAX_DEPOSITIONS}; "
                             "a deposition recompresses all kernels, so use a larger 'interval'")
        if self.basis == "fixed":
            if len(aux) < 2:
                raise ValueError("ERBS basis 'fixed' needs at least 2 configurations for the PCA (pca_frames)")
            mean, comps = fit_pca(jnp.zeros((0, f)), jnp.zeros((), jnp.int32), jnp.asarray(aux), k)
        else:
            mean, comps = jnp.zeros(f), jnp.eye(f, k)
        return ERBSState(jnp.zeros((capacity, f)), jnp.zeros((), jnp.int32), jnp.asarray(aux), mean, comps,
                         empty_kernels(capacity, k), jnp.zeros(()))

    def project(self, state: ERBSState, g: jax.Array) -> jax.Array:
        return (g - state.mean) @ state.components

    def energy_from_cv(self, state: ERBSState, s: jax.Array, n_atoms: int) -> jax.Array:
        return opes_bias(log_density(s, state.kernels), state.log_z, self.total_barrier(n_atoms), self.kT)

    def energy(self, state: ERBSState, graph, n_atoms: int) -> jax.Array:
        """Bias energy V of the first structure of ``graph`` (differentiable in positions and strain)."""
        return self.energy_from_cv(state, self.project(state, self.descriptor(graph)), n_atoms)

    def deposit(self, state: ERBSState, g: jax.Array) -> ERBSState:
        """Add the descriptor ``g`` as a reference and update PCA (variable basis), kernels and Z."""
        capacity = state.refs.shape[0]
        slot = jnp.minimum(state.n_refs, capacity - 1)
        refs = state.refs.at[slot].set(g)
        n_refs = jnp.minimum(state.n_refs + 1, capacity)
        k = self.n_components
        var0 = jnp.full(k, self.bandwidth**2)
        if self.basis == "variable":
            mean, comps = fit_pca(refs, n_refs, state.aux, k)
            if self.few_refs == "random":
                rows = n_refs + state.aux.shape[0]
                key = jax.random.fold_in(jax.random.PRNGKey(0), n_refs)
                random = jax.random.normal(key, comps.shape, comps.dtype)
                comps = jnp.where(rows < k, random, comps)
            cvs = (refs - mean) @ comps

            def body(i, kern):
                return jax.lax.cond(i < n_refs, lambda kk: add_kernel(kk, cvs[i], var0, jnp.ones(()), self.merge_threshold),
                                    lambda kk: kk, kern)

            kernels = jax.lax.fori_loop(0, capacity, body, empty_kernels(capacity, k))
        else:
            mean, comps = state.mean, state.components
            kernels = add_kernel(state.kernels, (g - mean) @ comps, var0, jnp.ones(()), self.merge_threshold)
        return ERBSState(refs, n_refs, state.aux, mean, comps, kernels, log_normalisation(kernels))


def fit_pca(refs: jax.Array, n_refs: jax.Array, aux: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Mean and first k principal axes (F, k) of the valid references plus the auxiliary rows.

    Eq. 13-14: centre with the per-feature mean, take the right singular vectors. Signs are fixed
    so the largest-magnitude entry of each axis is positive (deterministic).
    """
    data = jnp.concatenate([refs, aux], axis=0)
    mask = jnp.concatenate([jnp.arange(refs.shape[0]) < n_refs, jnp.ones(aux.shape[0], bool)])
    w = mask.astype(data.dtype)
    mean = jnp.sum(data * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    centred = (data - mean) * w[:, None]
    if centred.shape[0] < k:  # fewer rows than components: pad with zero rows (no effect on the axes)
        centred = jnp.concatenate([centred, jnp.zeros((k - centred.shape[0], centred.shape[1]))])
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    comps = vt[:k].T
    pivot = jnp.argmax(jnp.abs(comps), axis=0)
    signs = jnp.sign(comps[pivot, jnp.arange(k)])
    return mean, comps * jnp.where(signs == 0, 1.0, signs)[None, :]


def erbs_capacity(steps: int, interval: int) -> int:
    """Depositions in a run of ``steps`` steps (one at step 0, then every ``interval``)."""
    return steps // interval + 1 if interval > 0 else 1


def bias_kind(bias) -> str:
    if bias is None:
        return "none"
    if isinstance(bias, UDD):
        return "udd"
    if isinstance(bias, ERBS):
        return "erbs"
    raise TypeError(f"unknown bias {bias!r}: use None, UDD(...) or ERBS(...)")


SEED2_CONVENTIONS = ("code", "text")


def check_seed2_convention(convention: str) -> None:
    """One-line error for a reading of seed 2's parameters that is neither ``code`` nor ``text``."""
    if convention not in SEED2_CONVENTIONS:
        raise ValueError(f"seed 2 convention must be one of {', '.join(SEED2_CONVENTIONS)}, got {convention!r}")


def seed2_udd_parameters(height: float, width: float, convention: str = "code") -> dict:
    """:class:`UDD` keyword arguments for seed 2's (A, B), read one of two ways.

    ``code``: as apax's ``UncertaintyDrivenDynamics(height=A)`` reads A, the height of the whole
    bias in eV (E_UDD in [-A, 0]). ``text``: seed 2 §3.3's "eV atom⁻¹", A per atom (A = 1 is
    300 eV for a 300-atom box, which broke BMIM-BF4 at the first frame). B in eV either way.
    """
    check_seed2_convention(convention)
    return {"height": float(height), "width": float(width), "per_atom": convention == "text"}


def seed2_erbs_parameters(barrier: float, bandwidth: float, n_components: int, interval: int,
                          convention: str = "code", temperature: float = 300.0, text_per_atom: bool = False) -> dict:
    """:class:`ERBS` keyword arguments for seed 2's (ΔE, σ, k), read one of two ways.

    ``code``: as the erbs code that produced seed 2's numbers reads them: ΔE is a factor of k_B T
    (ΔE_total = barrier · k_B · temperature, not per atom), σ is the kernel *variance*
    (bandwidth √σ), and the descriptor has r_min 1.5 Å, r_max 6 Å, 4 basis functions.
    ``text``: the paper's words, ΔE in eV (per atom with ``text_per_atom``, as seed 2 §3.3 writes for
    BMIM-BF4), σ a standard deviation; the same descriptor. Read literally, seed 2's values tear
    alanine dipeptide and BMIM-BF4 apart within a few kernels (README "ERBS benchmark").
    """
    check_seed2_convention(convention)
    if convention == "code":
        barrier_ev, sigma, per_atom = barrier * units.kB * temperature, float(np.sqrt(bandwidth)), False
    else:
        barrier_ev, sigma, per_atom = barrier, bandwidth, text_per_atom
    return {"temperature": float(temperature), "barrier": float(barrier_ev), "per_atom": per_atom,
            "bandwidth": sigma, "n_components": int(n_components), "interval": int(interval),
            "r_min": 1.5, "r_max": 6.0, "n_basis": 4}


def from_dict(method: str, params: dict | None = None, temperature: float = 300.0):
    """Bias from a method name and a parameter dict (for nodes and configs)."""
    params = dict(params or {})
    if method in ("md", "none", None):
        if params:
            raise ValueError(f"method 'md' takes no bias parameters, got {sorted(params)}")
        return None
    if method == "udd":
        return UDD(**params)
    if method == "erbs":
        params.setdefault("temperature", temperature)
        if "contractions" in params:
            params["contractions"] = tuple(params["contractions"])
        return ERBS(**params)
    raise ValueError(f"unknown sampling method '{method}': use 'md', 'udd' or 'erbs'")


__all__ = ["UDD", "ERBS", "ERBSState", "Kernels", "add_kernel", "log_density", "log_normalisation",
           "opes_bias", "fit_pca", "empty_kernels", "erbs_capacity", "from_dict", "bias_kind",
           "seed2_erbs_parameters", "seed2_udd_parameters", "check_seed2_convention", "SEED2_CONVENTIONS"]
