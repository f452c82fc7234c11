"""The web UI (`saexplain serve`): pages, JSON API, live probe, search."""
