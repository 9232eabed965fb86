"""Interventions: hooks that edit a forward, and the condition kinds of an evaluation run.

* :mod:`analysis.interventions.base`: the :class:`~analysis.interventions.base.Intervention`
  protocol, the shared :class:`~analysis.interventions.base.PrefillState` and
  :class:`~analysis.interventions.base.SinkTracker`, and the
  :class:`~analysis.interventions.base.ConditionSpec` every kind subclasses;
* :mod:`analysis.interventions.registry`: the condition grammar and the kinds;
* one file per kind (``baseline``, ``var``, ``var_ablations``, ``var_text``, ``knockout``):
  the registry imports every module of the package, so a new kind is one new file.

Importing this package loads only ``base`` (the hook modules import it); the kinds
load with the registry.
"""
