"""Where bases come from: the catalog of vendor images, bounded and verified downloads, the Kubernetes apt key."""
