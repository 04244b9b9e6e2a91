"""The reward library: transforms, objectives, aggregation, reference rewards (paper §3–4)."""
from lsc_align.rewards.aggregate import lsc_sum, transformed_rewards, utility, weighted_raw_sum
from lsc_align.rewards.kl import best_of_k_kl
from lsc_align.rewards.objectives import (Objective, ReferenceKind, ReferenceSpec,
                                          make_objective)
from lsc_align.rewards.reference import (canned_reference, constant_reference,
                                         empirical_quantile, gaussian_reference,
                                         sample_statistics)
from lsc_align.rewards.transforms import Transform, log_sigmoid, lsc
