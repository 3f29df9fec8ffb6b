"""Perturbations (JPEG, WEBP, blur, noise, resize, median, motion blur, gamma, brightness-contrast)
and chains of them: a leaf library.

The build applies them to finished samples; ``bench stress`` applies them to the images of a
built split. Both parse the same spelling (``"resize(scale=0.5)|jpeg(quality=90)"``) and get the
same bytes for the same (image, seed).
"""

from .base import Perturbation
from .ops import *  # noqa: F401,F403  (the public names listed in ops.__all__)
from .ops import __all__ as _ops_all
from .photometric import *  # noqa: F401,F403
from .photometric import __all__ as _photometric_all

__all__ = ["Perturbation", *_ops_all, *_photometric_all]
