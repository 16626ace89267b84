"""FastAPI routers: HTTP in, one data-plane or model-state call, HTTP out."""
