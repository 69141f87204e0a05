"""The resolver pipeline's handlers, one job each; ``agent.pipeline`` puts them in order."""
