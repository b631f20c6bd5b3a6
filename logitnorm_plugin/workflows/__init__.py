"""Commands that combine the layers: bench (a plan of jobs run inline, on a local pool or on
Slurm through submitit; shards merged into the store; gather) and tune-t."""
