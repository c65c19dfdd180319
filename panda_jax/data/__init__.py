"""Stage records, test media and the grounded synthetic corpus."""
