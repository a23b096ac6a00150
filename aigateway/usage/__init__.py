"""What was used: the usage tap and writer (a record per request, journaled at once and
written to the database in batches), the journal itself, and the order a restart counts
what it finds before it admits anyone."""
