"""`python -m gateway` is the `commonwatt` command."""

from gateway.cli import main

main()
