"""The experiment pipeline: stages that chain the trainers, pools, alignment and evaluation."""
