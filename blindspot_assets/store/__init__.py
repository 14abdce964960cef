"""Storage: the only code that knows file layouts (Zarr row stores, Parquet, DuckDB views)."""
