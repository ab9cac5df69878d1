"""The config tree, shipped as the package aldar_lit.conf (pyproject's package-dir) for Hydra's pkg://aldar_lit.conf."""
