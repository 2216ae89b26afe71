"""odezoo's built-in plugins: each file registers one scheme or family through the public API."""
