"""The commands that run experiments on top of the library: `minichord demo | reproduce | probe | plot`."""
