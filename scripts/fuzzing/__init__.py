"""Hostile inputs thrown at the real command lines: `harness` runs and classifies cases, `inputs` and `traces`
generate them (`python scripts/fuzz.py --help`)."""
