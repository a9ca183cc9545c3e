"""A ground truth read from a file, standing where a run's ground-truth builder stands."""

from __future__ import annotations

from pathlib import Path

from tdabench.harness.engine.ground_truth import GroundTruth


class ReadGroundTruth:
    """Stands where a :class:`~tdabench.harness.engine.ground_truth.GroundTruthBuilder` stands in
    a run, for a ground truth read from a file: ``build()`` returns it, nothing is retrained or
    waited for. ``source`` is the record's ``gt_source``; ``dir.name`` its ``gt_key``."""

    wait_s = 0.0
    produced = False

    def __init__(self, gt: GroundTruth, key: str, mode: str, seeds: int, source: dict):
        self.gt, self.mode, self.seeds, self.source = gt, mode, seeds, source
        self.dir = Path(key)

    def build(self) -> GroundTruth:
        return self.gt
