"""OPT-IML Bench: source readers, task catalog, SeqIO registration, formatting and packing."""
