"""Training: ``train`` (``nsm train``) and its parts, one job per module.

trainer     ``train``: the run from set-up to the fits after its last epoch, and what each epoch keeps
setup       the run folder against ``--resume``, the network (fresh, warm-started or restored), optimizer, loaders
epoch       one epoch's steps, and the Monte Carlo validation after it
steps       a step's autocast, the compiled model, the loss, the stop when it diverges
modes       which pass an epoch trains on (warm-up, expectation pass, sampled phase)
schedule    the optimizer's parameter groups and the learning rate over the run
fits        the readout and temperature fitted on ``best.pt`` after the last epoch
health      dead and saturated layers, the loss at the class prior (the epoch's warnings)
activity    the firing records ``nsm analyze`` draws
figures     the run's curves and health figures
"""

from .steps import TrainingDiverged
from .trainer import train

__all__ = ["TrainingDiverged", "train"]
