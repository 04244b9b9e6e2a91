"""Reward transforms: raw, centered, log-sigmoid, LSC and pointwise.

All functions are pure `jnp`, elementwise, and safe under jit / vmap / grad. Log-sigmoid is
computed as −softplus(−z), which is finite with finite gradients for |z| up to the float32 and
bfloat16 ranges (the naive log(1 / (1 + exp(−z))) overflows at z ≈ −89 in float32).

Reference: Z. Wang, C. Nagpal, J. Berant, J. Eisenstein, A. D'Amour, S. Koyejo, V. Veitch.
"Transforming and Combining Rewards for Aligning Large Language Models", ICML 2024
(arXiv:2402.00742); §3, "Reward Transformation". The alignment objective is
    max_π E_x E_{y~π}[u(x, y)] − γ KL(π(·|x) ‖ π0(·|x)),   optimum π*(y|x) ∝ π0(y|x) exp(u/γ),
and the LSC utility is u(x, y) = log σ(r(x, y) − r_ref(x)) = log p(y is preferred to y_ref(x)),
the log-probability that y is "good", i.e. beats a reference response under the BT model
p(y⁻ ≺ y⁺ | x) = σ(r(x, y⁺) − r(x, y⁻)).
"""
from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


class Transform(str, enum.Enum):
  """The utilities compared in the paper; values are the names used in gin configs."""
  RAW = 'raw'                  # u = r                         (baseline)
  CENTERED = 'centered'        # u = r − r_ref                 (ablation: "centering only")
  LOG_SIGMOID = 'log_sigmoid'  # u = log σ(r − c), c constant  (ablation: "log-sigmoid only")
  LSC = 'lsc'                  # u = log σ(r − r_ref(x))       (the method)
  POINTWISE = 'pointwise'      # u = log σ(r), pointwise (binary-label) reward models


def log_sigmoid(z: ArrayLike) -> jax.Array:
  """log σ(z) = −softplus(−z), stable for all finite z; d/dz = σ(−z) ∈ [0, 1]."""
  z = jnp.asarray(z)
  # jnp.logaddexp(0, -z) is softplus(-z) without overflow; keeps the input dtype (bf16 stays bf16).
  return -jnp.logaddexp(jnp.zeros((), z.dtype), -z)


def raw(reward: ArrayLike, reference: ArrayLike | None = None) -> jax.Array:
  """Raw utility u = r (the reference, if given, is ignored)."""
  del reference
  return jnp.asarray(reward)


def centered(reward: ArrayLike, reference: ArrayLike) -> jax.Array:
  """Centering only: u = r(x, y) − r_ref(x).

  At the KL-regularised optimum a per-prompt constant cancels in the normalisation, so this
  policy equals the raw-reward policy; it is the "centering only" ablation of the paper.
  """
  return jnp.asarray(reward) - jnp.asarray(reference)


def log_sigmoid_fixed(reward: ArrayLike, reference: ArrayLike = 0.0) -> jax.Array:
  """Log-sigmoid only: u = log σ(r − c) with a prompt-independent constant c (default 0).

  The "log-sigmoid only" ablation: the saturating shape of LSC without per-prompt centering, so
  the BT model's free per-prompt shift C(x) changes which prompts are saturated.
  """
  return log_sigmoid(jnp.asarray(reward) - jnp.asarray(reference))


def lsc(reward: ArrayLike, reference: ArrayLike) -> jax.Array:
  """LSC transform: u(x, y) = log σ(r(x, y) − r_ref(x)) (paper §3).

  u ≤ 0; u ≈ r − r_ref (linear) far below the reference and u → 0 (saturated) far above it.
  Invariant to any per-prompt shift of the BT reward: r → r + C(x), r_ref → r_ref + C(x).

  Args:
    reward: r(x, y), any shape.
    reference: r_ref(x), broadcastable to `reward`.

  Returns:
    log σ(r − r_ref), same shape and dtype as the broadcast inputs.
  """
  return log_sigmoid(jnp.asarray(reward) - jnp.asarray(reference))


def pointwise(reward: ArrayLike, reference: ArrayLike | None = None) -> jax.Array:
  """Pointwise reward models (binary 'good' labels, logit scale): u = log σ(r) = log p(good)."""
  del reference
  return log_sigmoid(reward)


_FUNCTIONS = {
    Transform.RAW: raw,
    Transform.CENTERED: centered,
    Transform.LOG_SIGMOID: log_sigmoid_fixed,
    Transform.LSC: lsc,
    Transform.POINTWISE: pointwise,
}


def parse(kind: Transform | str) -> Transform:
  """The Transform named `kind`; an unknown name is a ValueError listing the valid ones."""
  try:
    return Transform(kind)
  except ValueError:
    names = ', '.join(t.value for t in Transform)
    raise ValueError(f'unknown reward transform {kind!r}; expected one of: {names}') from None


def apply(kind: Transform | str, reward: ArrayLike, reference: ArrayLike) -> jax.Array:
  """Applies the transform named `kind` (a Transform or its gin name)."""
  return _FUNCTIONS[parse(kind)](reward, reference)


def uses_reference(kind: Transform | str) -> bool:
  """Whether the transform reads the reference reward at all."""
  return parse(kind) in (Transform.CENTERED, Transform.LOG_SIGMOID, Transform.LSC)
