"""The paper's analyses as a grid of training runs: PAR on / off, shots, support annotations.

:mod:`grid` (cells and their commands) -> :mod:`cell` (one cell: train, score, one JSON) ->
:mod:`runner` (every unfinished cell in a subprocess) -> :mod:`results` (statistics over seeds)
-> :mod:`table` / :mod:`plots` -> :mod:`report`. The command is ``experiments/analyze.py``.
"""
