"""pi-image builder: customizes vendor OS images offline into self-joining Kubernetes nodes."""

__version__ = "0.1.0"
