"""How a training step runs on the device: precision (autocast, loss scaling), memory format, cuDNN and TF32
policy, Generalist's two streams, CUDA graphs, torch.compile, the optimiser implementation, and the named
phases the profiler and the end-to-end benchmark see. `engine.*` in the run config (EngineConfig) drives it;
`Engine` is what a method holds. The profile command lives in trainer/engine/profiling.py.
"""

from .cudnn_tf32 import apply_cudnn_tf32_policy, cudnn_tf32_state, restore_cudnn_tf32_state
from .engine import Engine
from .phases import PHASES, PhaseTimer, phase, phase_ranges, timing_phases
from .precision import LossScaler, Precision, autocast
from .settings import EngineSettings, resolve_engine
from .step_metrics import Kind, Metric, StepAccumulator, StepMetrics, host_values
from .streams import ExpertStreams, draw_update_seed, independent_rng

__all__ = ["PHASES", "Engine", "EngineSettings", "ExpertStreams", "Kind", "LossScaler", "Metric", "PhaseTimer",
           "Precision", "StepAccumulator", "StepMetrics", "apply_cudnn_tf32_policy", "autocast", "cudnn_tf32_state",
           "draw_update_seed", "host_values",
           "independent_rng", "phase", "phase_ranges", "resolve_engine", "restore_cudnn_tf32_state", "timing_phases"]
