"""Studies: a declared grid of trainings and evaluations, run resumably, summarised with intervals."""

from .plan import StudyPlan, load_plan
from .runner import StudyRunner
from .summary import paired_difference, spread, summarise, write_summary

__all__ = ["StudyPlan", "StudyRunner", "load_plan", "paired_difference", "spread", "summarise", "write_summary"]
