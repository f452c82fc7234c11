"""The end-to-end run (`saexplain run`, `score`, `report`): stages wired together, resumable. Import from the
submodules (`pipeline.configs` is light; `pipeline.runner` loads the model libraries)."""
