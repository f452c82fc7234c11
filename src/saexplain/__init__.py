"""saexplain."""
