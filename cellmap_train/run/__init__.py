"""A run as a whole: its record (result.json), its folder, and what reads them."""
