"""Configuration sources: async iterators of configuration versions (SPEC §3)."""
