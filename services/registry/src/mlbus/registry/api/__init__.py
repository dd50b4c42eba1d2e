"""The gRPC face of the registry: a thin servicer and the protobuf converters."""
