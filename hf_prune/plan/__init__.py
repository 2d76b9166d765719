"""The plan: importance scores (:mod:`.importance`), the targets' rules (:mod:`.allocation`: uniform, EMP;
:mod:`.search`; :mod:`.hyperflux`), and :mod:`.planner`, which turns a config into a :class:`~hf_prune.cut.apply.PruningPlan`."""
