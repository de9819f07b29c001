"""`python -m app.cli`: the faceverify command."""

from app.cli import main

main()
