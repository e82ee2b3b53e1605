"""sweeper: finds zombie workflow steps on the data platform and marks them finished."""

__version__ = "0.1.0"
