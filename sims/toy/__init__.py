"""n-dimensional toy LoRA models, batched over widths × rate configurations × seeds."""

from sims.toy.engine import STATS
from sims.toy.optim import OPTIMIZERS
from sims.toy.problem import ToyProblem
from sims.toy.simulate import PROBLEMS, simulate, simulate_batch

__all__ = ["OPTIMIZERS", "PROBLEMS", "STATS", "ToyProblem", "simulate", "simulate_batch"]
