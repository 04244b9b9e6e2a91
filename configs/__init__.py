"""The gin configs (models/, objectives/, runs/, experiments/, world/), installed as lsc_align.configs."""
