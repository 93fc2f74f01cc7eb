"""Baselines for the benchmark suite. None of this is part of the product.

- ``floor_asgi``: a bare ASGI app on Hypercorn's trio worker (the floor).
- ``quart_minimal``: one Quart-Trio route on the same server (the framework reference).
- ``fastapi_jobs``: start, status and result written the usual FastAPI way, on uvicorn.
"""
