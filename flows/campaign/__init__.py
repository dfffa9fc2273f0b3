"""Campaigns: grids of models x losses x margins x fault models x rates x seeds, run resumably.

``spec`` validates the campaign file, ``tasks`` expands it into content-keyed stage tasks,
``executors`` runs them (local process pool or Ray), ``store`` records results in SQLite,
``runner`` schedules, ``report`` writes Markdown/HTML, ``commands`` adds ``mcel campaign/report``.
"""
