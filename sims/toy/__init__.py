"""n-dimensional toy LoRA models, batched over widths × rate configurations × seeds."""

from loraplus_lab.sims.toy.engine import STATS
from loraplus_lab.sims.toy.optim import OPTIMIZERS
from loraplus_lab.sims.toy.problem import ToyProblem
from loraplus_lab.sims.toy.simulate import PROBLEMS, simulate, simulate_batch

__all__ = ["OPTIMIZERS", "PROBLEMS", "STATS", "ToyProblem", "simulate", "simulate_batch"]
