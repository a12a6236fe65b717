# Adds a historic copy of every test set to tools/test.py: the same samples, each image degraded by
# one of the three historic filters, chosen and seeded per image so the scores are reproducible.
# Urban1960 (already archival imagery) is exempt.
historic_test = dict(
    enabled=True,
    filter=dict(
        type="HistoricFilter",
        prob=1.0,
        deterministic=True,
        seed=0,
        modes=("bw", "bw_grain", "sepia"),
        exempt_datasets=("urban1960",),
    ),
)
