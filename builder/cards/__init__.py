"""Writing cards: the device checks, the writer engine, stamping a node at flash time."""
