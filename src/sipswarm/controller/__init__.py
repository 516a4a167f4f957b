"""sipswarm.controller package."""
