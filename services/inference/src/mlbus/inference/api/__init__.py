"""The v2 gRPC servicer and its protobuf ↔ domain converters."""
