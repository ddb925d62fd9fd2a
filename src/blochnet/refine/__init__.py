"""Hybrid refinement: parameters, thickness models, objective, optimisers, outputs.

The package itself is callable: ``blochnet.refine(crystal, datasets, out_dir, config)``
runs :func:`blochnet.refine.run.refine` and returns its
:class:`~blochnet.refine.run.RefinementResult` (PyTorch is imported on the first call).
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`blochnet.refine.run.refine`."""

    def __call__(self, *args, **kwargs):
        from blochnet.refine.run import refine

        return refine(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
