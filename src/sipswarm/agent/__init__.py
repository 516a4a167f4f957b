"""sipswarm.agent package."""
