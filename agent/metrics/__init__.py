"""The agent's Prometheus metrics (collector.py) and its admin listener (admin.py)."""
