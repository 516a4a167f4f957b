"""One module per CLI command; each exports ``configure(parser)`` and ``main(args)``."""
