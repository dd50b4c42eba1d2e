"""The router's gRPC front door (Open Inference Protocol v2) and its helpers."""
