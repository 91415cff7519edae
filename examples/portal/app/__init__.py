"""The example portal: a minimal stand-in for the Data Product Portal backend."""
