"""The HTTP face: the FastAPI app, its routers (ops, answers, KB admin, phone) and static pages."""
