"""The end-to-end run (`saexplain run`, `score`, `report`): stages wired together, resumable."""

from saexplain.pipeline.runner import RunConfig, StageConfigs, choose_features, open_run, run_all

__all__ = ["RunConfig", "StageConfigs", "choose_features", "open_run", "run_all"]
