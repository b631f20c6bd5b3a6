"""Commands that combine the layers: bench and tune-t."""
