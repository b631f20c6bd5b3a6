"""The evaluation engine: specs of what is evaluated, one pass per dataset, feeds, the fit cache
and the protocols."""
