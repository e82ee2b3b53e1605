"""A local stand-in of the data platform API, for demos, tests and benchmarks.

Importing this package imports nothing heavy: the server stack (starlette,
uvicorn) is loaded only by `sweeper.devserver.server`.
"""
