"""Who may do what, and how much: the key table in memory, rate limits and token quotas,
budgets, prices and allow-lists. Each `*_shared` module keeps its room's counts in
PostgreSQL, across gateways."""
