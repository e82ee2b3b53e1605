"""`python -m sweeper` and the `sweeper` console script."""

from sweeper.cli import main

if __name__ == "__main__":
    main()
