"""Checks that a Hugging Face causal-LM checkpoint directory reproduces a golden.npz in transformers.

Loads DIR with AutoModelForCausalLM (float32, eager attention), runs golden's `input_ids` and
compares with its `logits`, and reruns greedy generation from `prompt_ids` (no early stop) against
`greedy_ids`. Prints one JSON line: {"max_abs_diff": ..., "greedy_match": ...}.

Runs in the environment with torch and transformers (see write_checkpoints.py):

    /work/venv_hf/bin/python tests/data/pretrained/check_export.py \
        --checkpoint /tmp/exported --golden tests/data/pretrained/llama3_gqa_rope_scaling/golden.npz
"""
import argparse
import json
import os

import numpy as np
import torch
import transformers


def check(checkpoint: str, golden_path: str) -> dict:
  """Max |logits - golden logits| and whether greedy generation matches golden's."""
  if not os.path.isfile(os.path.join(checkpoint, 'config.json')):
    raise FileNotFoundError(f'no config.json in --checkpoint {checkpoint}')
  if not os.path.isfile(golden_path):
    raise FileNotFoundError(f'--golden {golden_path} does not exist')
  golden = np.load(golden_path)
  missing = {'input_ids', 'logits', 'prompt_ids', 'greedy_ids'} - set(golden.files)
  if missing:
    raise ValueError(f'{golden_path} lacks arrays {sorted(missing)}')
  model = transformers.AutoModelForCausalLM.from_pretrained(
      checkpoint, dtype=torch.float32, attn_implementation='eager').eval()
  prompt = torch.from_numpy(golden['prompt_ids']).long()
  config = transformers.GenerationConfig(
      do_sample=False, max_new_tokens=golden['greedy_ids'].shape[1], eos_token_id=None,
      pad_token_id=None, bos_token_id=None)
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(golden['input_ids']).long()).logits.numpy()
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                         generation_config=config)
  if logits.shape != golden['logits'].shape:
    raise ValueError(f'logits shape {logits.shape} != golden {golden["logits"].shape}')
  greedy = out[:, prompt.shape[1]:].numpy()
  return {'max_abs_diff': float(np.abs(logits - golden['logits']).max()),
          'greedy_match': bool(np.array_equal(greedy, golden['greedy_ids']))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, help='Hugging Face checkpoint directory')
  parser.add_argument('--golden', required=True, help='golden.npz written by write_checkpoints.py')
  args = parser.parse_args()
  print(json.dumps(check(args.checkpoint, args.golden)))


if __name__ == '__main__':
  main()
