"""SAEExplainer training: SFT on reference explanations, activation-reward preference pairs, two DPO rounds
(TRL + PEFT). The explainer model itself lives in explain/saeexplainer.py."""

from saexplain.train.config import TrainConfig

__all__ = ["TrainConfig"]
