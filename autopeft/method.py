"""Deprecated alias of :mod:`autopeft.methods.base`, kept for plugins written before 0.2: import the same
names from ``autopeft`` instead."""

from .methods.base import *  # noqa: F401,F403
from .methods.base import DATA_DEPENDENT_LORA_INITS, divisor_of_layer_sizes, peft_task_type, unique_trainable  # noqa: F401
