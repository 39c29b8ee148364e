"""tillface: recognise loyalty members at a shop till, on the edge."""

__version__ = "0.1.0"
