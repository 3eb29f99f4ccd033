"""Choosing before or around a run: hyper-parameter search (tune), zero-config recipes (autoconfig), backbone selection."""
