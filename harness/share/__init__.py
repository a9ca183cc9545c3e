"""Ground truths as files to hand on, the tools above the run path: ``tdabench-gt`` (:mod:`.cli`),
export from a results folder and import into a cache (:mod:`.export`), dattri's layout written
(:mod:`.formats`), the reference run carried in a bundle (:mod:`.reference`) and the retraining
check of a bundle's rows (:mod:`.spotcheck`). The bundle format is :mod:`tdabench.harness.core.bundle`;
how a run reads a ground truth from a bundle or the field's formats is
:mod:`tdabench.harness.engine.gt_from` with :mod:`tdabench.harness.read.gt_sources`."""
