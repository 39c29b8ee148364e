"""Who may do what: key files and their names (layout), message signatures, API keys, broker accounts."""
