"""sipswarm.engine package."""
