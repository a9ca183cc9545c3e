"""Ground truths as shareable artifacts: the bundle format (:mod:`.bundle`), the fingerprints that
tie a bundle to a task (:mod:`.fingerprints`), export from a results folder and import into a cache
(:mod:`.export`), a run's ground truth read from a bundle or from the field's formats
(:mod:`.source`, :mod:`.formats`) and the ``tdabench-gt`` command (:mod:`.cli`)."""
