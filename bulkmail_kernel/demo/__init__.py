"""The deterministic demo data set and the deliberately dirty sample files."""
