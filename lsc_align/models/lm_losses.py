"""Language-model losses for the policy: masked next-token cross-entropy (SFT)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lsc_align.models import policy
from lsc_align.models.policy import PAD_ID, Params, PolicyConfig


def masked_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                         weights_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ_t w_t · −log softmax(logits_t)[target_t], Σ_t w_t); sums, so batches accumulate."""
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxTxV.astype(jnp.float32), targets_BxT)
  weights_BxT = weights_BxT.astype(jnp.float32)
  return jnp.sum(nll_BxT * weights_BxT), jnp.sum(weights_BxT)


def sft_loss(params: Params, config: PolicyConfig, prompt_ids: jax.Array,
             response_ids: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token cross-entropy of the responses given the prompts (SFT of π0).

  prompt_ids [B, Lp] and response_ids [B, Lr] are right-padded (pad = 0); the sequence fed to
  the model is each prompt followed directly by its response (policy.pack_prompt_response), and
  only response tokens (EOS included) are targets. Returns (loss, metrics) where metrics holds
  'loss', 'num_tokens' and 'accuracy' (argmax = target, over response tokens). Differentiable
  in params; jit with `config` static.
  """
  tokens_BxL, prediction_positions_BxLr = policy.pack_prompt_response(prompt_ids, response_ids)
  # Logits at the response's prediction positions only (no [B, L, V] over the prompt).
  logits_BxLrxV, _ = policy.forward_at(params, config, tokens_BxL, prediction_positions_BxLr)
  weights_BxLr = (response_ids != PAD_ID).astype(jnp.float32)
  loss_sum, num_tokens = masked_cross_entropy(logits_BxLrxV, response_ids, weights_BxLr)
  denominator = jnp.maximum(num_tokens, 1.0)
  loss = loss_sum / denominator
  correct = (jnp.argmax(logits_BxLrxV, axis=-1) == response_ids).astype(jnp.float32)
  accuracy = jnp.sum(correct * weights_BxLr) / denominator
  return loss, {'loss': loss, 'num_tokens': num_tokens, 'accuracy': accuracy}
