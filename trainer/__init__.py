"""The trainer: training loop, methods and objectives, attacks, evaluation, data, the CLI.

Imported as `generalist_trainer.trainer`; the public API is at `generalist_trainer` (see its docstring).
"""
