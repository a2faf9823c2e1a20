"""Side-by-side benchmarks: this service against FastAPI and Flask versions of it and a raw-ASGI floor."""
