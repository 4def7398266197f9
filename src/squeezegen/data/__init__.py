"""Data layer: raw sources (synthetic, LAPIS, a folder) and preprocessing into HF `datasets`."""
