"""Command-line scripts: checkpoint conversion, reports."""
