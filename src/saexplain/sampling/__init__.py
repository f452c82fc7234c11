"""Example sampling: per feature, disjoint explain / score pools of context windows."""
