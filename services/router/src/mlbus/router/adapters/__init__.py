"""Implementations the router's controller and front door use: worker processes, worker
gRPC clients, the registry source."""
