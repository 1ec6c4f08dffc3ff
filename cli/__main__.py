"""``python -m cli``: the pcdb command."""

from cli.warm import main

main()
