"""WorldConfig refuses numbers that make no sense where they enter, naming the field."""
import pytest

from lsc_align.world.config import Topic, WorldConfig


@pytest.mark.parametrize('changes, message', [
    ({'help_max': float('inf')}, 'WorldConfig.help_max must be a finite number, got inf'),
    ({'harm_max': float('nan')}, 'WorldConfig.harm_max must be a finite number'),
    ({'train_prompts': 'many'}, "WorldConfig.train_prompts must be an int, got 'many'"),
    ({'train_prompts': 0}, 'WorldConfig.train_prompts must be >= 1, got 0'),
    ({'seed': 1.5}, 'WorldConfig.seed must be an int'),
    ({'pairs_per_prompt': True}, 'WorldConfig.pairs_per_prompt must be an int'),
    ({'list_prob': (0.1, 2.0)}, 'WorldConfig.list_prob must be in [0, 1], got 2.0'),
    ({'list_prob': (0.1,)}, 'WorldConfig.list_prob must be 2 numbers'),
    ({'off_topic_prob': -0.1}, 'WorldConfig.off_topic_prob must be in [0, 1]'),
    ({'help_label_scale': 0.0}, 'WorldConfig.help_label_scale must be > 0'),
    ({'help_saturation': -1.0}, 'WorldConfig.help_saturation must be > 0'),
    ({'filler_cost': -1.0}, 'WorldConfig.filler_cost must be >= 0'),
    ({'harmful_mode_weights': (0.5, 0.5, 0.0, float('nan'))},
     'WorldConfig.harmful_mode_weights must be a finite number'),
    ({'difficulty_modifiers': (('quickly', float('inf')),)},
     "WorldConfig.difficulty_modifiers['quickly'] must be a finite number"),
])
def test_nonsense_numbers_are_refused(changes, message):
  with pytest.raises(ValueError) as info:
    WorldConfig(**changes)
  assert message in str(info.value)


def test_topic_sensitivity_range():
  topic = WorldConfig().topics[0]
  bad = Topic(topic.name, topic.content, topic.detail, topic.request, topic.compliance,
              topic.professionals, 1.5)
  with pytest.raises(ValueError, match="Topic 'cooking': sensitivity must be in"):
    WorldConfig(topics=(bad,) + WorldConfig().topics[1:])


def test_defaults_and_integral_floats_are_accepted():
  assert WorldConfig(help_max=4, list_prob=[0.0, 1.0]).list_prob == (0.0, 1.0)
