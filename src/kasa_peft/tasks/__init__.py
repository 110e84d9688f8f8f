"""Task families: data loading and official metrics (GLUE, E2E, commonsense, instruction following).

Pure data and metrics, no model code: import the submodules (``glue``, ``e2e``,
``commonsense``, ``instruct``, ``metrics``) directly.
"""
