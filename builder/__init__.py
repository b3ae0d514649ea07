"""pi-image builder: customizes vendor OS images offline into self-joining Kubernetes nodes."""

from pathlib import Path

__version__ = "0.1.0"
DATA_DIR = Path(__file__).resolve().parent / "data"  # shipped profiles, overlays, catalog, keyrings, manifests
