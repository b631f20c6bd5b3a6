"""Names to objects: entry points, architectures, pytorch-ood's model registry and the model
split."""
