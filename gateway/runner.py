"""The former home of the script runner: everything is in :mod:`gateway.scripts` now.

Kept so ``from gateway.runner import ...`` goes on working.
"""

from .scripts import *  # noqa: F403
from .scripts import __all__  # noqa: F401
