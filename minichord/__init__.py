"""minichord: CHORD (arXiv 2508.11408) from scratch, small enough to read in one sitting."""

__version__ = "0.1.0"
