"""External catalogs: lens / look-alike catalogs read into one schema, the DR10 brick cross-match, hard-negative mining."""
