"""Names and ids that every layer agrees on, defined once.

* Properties: the two the objectives, reward models, world and evaluation speak of, and the
  HH-layout subset directory that holds each one's preference pairs.
* Learners: the policy learners' names (lsc_align.align.learners maps each to its iteration).
* Token ids (the T5 / seqio convention): pad 0, eos 1, unk 2, no bos; the world's word
  vocabulary and SentencePiece models trained here both follow it.
"""
from __future__ import annotations

PROPERTIES = ('helpful', 'harmless')
PROPERTY_SUBSETS = {'helpful': 'helpful-base', 'harmless': 'harmless-base'}

LEARNERS = ('ppo', 'rloo')

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
