"""Hybrid refinement: configuration, parameters, thickness and orientation models,
objective, optimisers, uncertainties, outputs, and the pipeline that runs them
(:func:`blochnet.refinement.pipeline.refine`, public as ``blochnet.refine``)."""
