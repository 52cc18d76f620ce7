"""Design-space sweeps on Ray: `python -m sim.sweep SPEC.yaml --out DIR` (see `sim.sweep.cli`).

spec (the YAML file and its points), points (resolving a point; projecting it as sim.run does), journal (the
resumable output folder), runner (Ray: traces in the object store, a pool of worker actors), plots, cli.
"""
