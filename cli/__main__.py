"""``python -m cli``: the pcdb command."""

from cli.main import main

main()
