"""The ``lbw`` command line (typer). Command modules import heavy libraries inside command bodies only."""
