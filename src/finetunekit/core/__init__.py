"""Foundations every layer uses: errors, registries, the machine (runtime), statistics, safe YAML, output checks."""
