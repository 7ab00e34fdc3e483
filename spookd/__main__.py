"""Entry point for ``python -m spookd``."""

from spookd.cli import main

if __name__ == "__main__":
    main()
