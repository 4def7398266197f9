"""Every generator on the same conditions and seeds, scored by the judge: `measure` runs them
and computes evaluate's `gen.*` figures; `render` writes the report's generation section."""
