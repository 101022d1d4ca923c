"""The web application for radiologists and administrators (FastAPI, server-rendered Jinja2).

It reads and writes the same database as the node and the worker, through `core`, and never
imports them: `pneumotriage/` composes it with whatever else the process runs.
"""
