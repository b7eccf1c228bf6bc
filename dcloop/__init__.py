"""dcloop: confident learning inside the Lightning training loop."""

__version__ = "0.1.0"
