"""sipswarm.metrics package."""
