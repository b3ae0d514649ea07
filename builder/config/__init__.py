"""What users configure and the facts it is checked against: profiles and their schema, values, addresses, image
references, container runtimes."""
