"""Reports: comparison tables and plots."""
