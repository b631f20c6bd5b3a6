"""Results into tables, figures, reports and the forms that go upstream: pytorch-ood registry
entries and their upload keys, OpenOOD leaderboard rows, Hugging Face cards, patches."""
