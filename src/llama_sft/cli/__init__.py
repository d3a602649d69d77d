"""Command-line entry points; each subcommand module registers itself and imports heavy libraries lazily."""
