"""Storage: the only code that knows file layouts (Zarr row stores, Parquet tables, DuckDB views)."""
