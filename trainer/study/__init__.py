"""Studies: a declared grid of trainings and evaluations, run resumably, summarised with intervals."""

from trainer.study.plan import StudyPlan, load_plan
from trainer.study.runner import StudyRunner
from trainer.study.summary import paired_difference, spread, summarise, write_summary

__all__ = ["StudyPlan", "StudyRunner", "load_plan", "paired_difference", "spread", "summarise", "write_summary"]
