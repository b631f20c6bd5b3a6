"""Export formats: pytorch-ood registry entries and their upload keys, tables, cards."""
