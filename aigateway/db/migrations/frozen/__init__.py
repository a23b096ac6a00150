"""Frozen copies of code a revision runs, one file per revision that needs one, named for
it (r0016_names.py is protocol/names.py as revision 0016 was released with it).

Why: a revision must do the same thing on every database it ever upgrades. Were it to
import today's source, a later change there (a name rule, a price unit) would make the
same revision write different rows on a database upgraded next year than on one upgraded
today. So a revision imports nothing from the package but these files, and a file here is
never edited after its revision is released; tests/test_migrations_frozen.py holds both.
PL/pgSQL functions are written out inside the revision that creates them, for the same
reason; a later revision that changes one re-creates it whole.
"""
