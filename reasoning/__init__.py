"""Symbolic half of wta-bridge: ASP facts from decoded images, a rule library, and clingo under limits.

`reasoning.facts` builds facts, `reasoning.engine` solves user programs in worker
processes, `reasoning.query` and `reasoning.benchmark` are the command-line tools.
The package root imports nothing heavy, so worker processes start quickly.
"""
