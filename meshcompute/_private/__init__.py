"""Private implementation modules of meshcompute. Nothing here is public API."""
