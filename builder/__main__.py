"""`python -m builder` runs the pi-image CLI."""

from .cli import main

main()
