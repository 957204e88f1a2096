"""Canary rollouts of rule versions: the split (split.py), the guards (guards.py), the plan (plan.py)."""
