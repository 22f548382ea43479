"""Load shapes."""
